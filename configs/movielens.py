"""MovieLens-100K from raw ratings; LLaRA's user split and val/test rows."""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(
      name="movielens100k", manual_dir="../shared/data/movielens_100k", seed=0, num_candidates=20,
      max_history=10, min_history=3, max_seq_len=0,
      split_file="../shared/data/llara_movielens/split_users.json",
      eval_rows_dir="../shared/data/llara_movielens/jsonl"))
  c.prompt = ml_collections.ConfigDict(dict(domain="movies", templates=(), title_format="auto"))
  c.tokenizer = common.bpe_tokenizer(8192)
  # CPU-sized: a small Llama from scratch; real quality needs a GPU or a pretrained backbone.
  c.update(common.training(steps_sft=2000, steps_preference=500))
  c.model.overrides.max_position_embeddings = 1024
  return c
