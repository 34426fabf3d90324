"""The demo's world with every title one token (`tokenizer.title_tokens`): configs/synthetic_text.py's
model and recipe (`common.title_tokens_from_scratch`, 2,000 SFT steps, 3 oracle folds), for
comparison with it, whose titles are text. configs/demo.py is this with the history loss, 1,000 SFT
steps and 2 oracle folds.

  python -m launch.main --config=configs/synthetic_titles.py --workdir=DIR
"""

from configs import common, synthetic_text


def get_config():
  c = synthetic_text.get_config()
  common.title_tokens_from_scratch(c, sft_steps=2000)
  c.methods = ("sft", "dpo", "rosepo")
  return c
