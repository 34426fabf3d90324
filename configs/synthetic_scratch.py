"""The synthetic world with a small Llama trained from scratch (BPE tokenizer trained here).

Fast, and what the tests run (cut down further). Measured: in 600 SFT steps this model did not
learn to copy a candidate's title out of the prompt (13% valid answers), which is why the
README main job (configs/demo.py) starts from the pretrained SmolLM2 backbone instead.
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.update(common.synthetic_data())
  c.tokenizer = ml_collections.ConfigDict(dict(kind="bpe", vocab_size=1024, path=""))
  c.update(common.training(steps_sft=300, steps_preference=100))
  c.methods = ("sft", "dpo", "rosepo")
  return c
