"""The synthetic world with a small Llama trained from scratch (BPE tokenizer trained here).

Fast, and what the tests run (cut down further). Measured: in 600 SFT steps this model did not
learn to copy a candidate's title out of the prompt (13% valid answers), which is why the
README main job (configs/demo.py) starts from the pretrained SmolLM2 backbone instead.
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", manual_dir="", seed=0, num_candidates=20, max_history=10, min_history=3,
      max_seq_len=512,
      world=dict(num_items=240, num_genres=8, num_users=600, min_len=6, max_len=16, zipf=1.0,
                 pop_exponent=1.0, taste_concentration=0.3, drift=0.15, in_genre=0.85,
                 val_fraction=0.1, test_fraction=0.1)))
  c.prompt = ml_collections.ConfigDict(dict(domain="", templates=()))
  c.tokenizer = ml_collections.ConfigDict(dict(kind="bpe", vocab_size=1024, path=""))
  c.update(common.training(steps_sft=300, steps_preference=100))
  c.methods = ("sft", "dpo", "rosepo")
  return c
