"""MovieLens-100K with every title one token (`tokenizer.title_tokens`), a 2-layer Llama from scratch
with copy heads and the fewer-candidates curriculum, sized for 2 CPU cores
(`common.title_tokens_from_scratch`).

  python -m launch.main --config=configs/movielens_titles.py --workdir=DIR
"""

from configs import common, movielens


def get_config():
  c = movielens.get_config()
  common.title_tokens_from_scratch(c, sft_steps=4000)
  return c
