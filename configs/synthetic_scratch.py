"""The synthetic world with a small Llama trained from scratch (BPE tokenizer trained here).

Fast, and what the tests run (cut down further). Measured: in 600 SFT steps this 4-layer model
does not learn to copy a candidate's title out of the prompt (13% valid answers); the README main
job (configs/demo.py) adds what makes it learn within the budget: copy heads at init and a
fewer-candidates curriculum (docs/findings.md).
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.update(common.synthetic_data())
  c.tokenizer = common.bpe_tokenizer(1024)
  c.update(common.training(steps_sft=300, steps_preference=100))
  c.methods = ("sft", "dpo", "rosepo")
  return c
