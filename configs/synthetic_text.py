"""The demo's world with titles as text: a 2-layer Llama from scratch that writes each answer's
title as BPE text. configs/demo.py until commit 714d0e0; its figures in docs/results.md
("Demo", "Over 3 seeds", "Does the smoothing help?") are this config's, and
configs/world_smoothing.py and configs/synthetic_titles.py start from it.

A from-scratch model learns slowly to copy a candidate title out of the prompt (docs/results.md).
Two things make it learn within a CPU budget: the last layer starts as copy heads
(`model.copy_init_layers`: its value->output map is the identity, so attending to a name already
raises that name's logit and SFT only has to learn where to attend), and SFT starts on prompts that
show 2, then 5, then 10, then 15 of the 20 candidates (`sft.candidate_curriculum`) and ends with
100 steps on the full prompts. The preference stage keeps an SFT term (weight 1).

  python -m launch.main --config=configs/synthetic_text.py --workdir=DIR
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.update(common.synthetic_data())
  c.data.world.num_users = 3000
  c.tokenizer = common.bpe_tokenizer(1024)
  c.update(common.training(steps_sft=2000, steps_preference=150))
  c.model.overrides.update(num_layers=2, num_kv_heads=4)
  c.model.copy_init_layers = (-1,)  # the last layer starts as copy heads (model.init_copy_heads)
  c.methods = ("sft", "dpo", "rosepo")
  c.sft.update(batch_size=32, log_every=50, eval_every=500, checkpoint_every=250,
               eval_examples=256,
               candidate_curriculum=((400, 2), (800, 5), (1200, 10), (1900, 15)))
  c.sft.optim.update(learning_rate=3e-3, warmup_steps=50)
  c.oracle.update(max_epochs=40)
  c.negatives.update(max_prompts=2400, batch_size=64)
  c.preference.update(batch_size=16, log_every=10, checkpoint_every=50, max_prompts=2400,
                      sft_weight=1.0)
  c.preference.optim.update(learning_rate=1e-4, warmup_steps=10)
  c.eval.update(max_examples=600, batch_size=64)
  return c
