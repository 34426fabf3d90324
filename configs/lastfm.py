"""LastFM (LLaRA processing), val/test with S-DPO's frozen candidates; BPE tokenizer trained here."""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.update(common.lastfm_data())
  c.tokenizer = common.bpe_tokenizer(8192)
  # CPU-sized: a small Llama from scratch; real quality needs a GPU or a pretrained backbone.
  c.update(common.training(steps_sft=2000, steps_preference=500))
  c.model.overrides.max_position_embeddings = 1024
  return c
