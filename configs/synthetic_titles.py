"""The demo's synthetic world with every title one token (`tokenizer.title_tokens`): the demo's
model and recipe (`common.title_tokens_from_scratch`), for comparison with configs/demo.py, whose
titles are text.

  python -m launch.main --config=configs/synthetic_titles.py --workdir=DIR
"""

from configs import common, demo


def get_config():
  c = demo.get_config()
  common.title_tokens_from_scratch(c, sft_steps=2000)
  c.methods = ("sft", "dpo", "rosepo")
  return c
