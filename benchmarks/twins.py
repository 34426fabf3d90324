"""The model pair the benchmarks compare: our Flax Llama and the same weights in transformers.

  ours, theirs = twins.llama_pair(hidden=256, layers=4, vocab=8192)

A Llama-shaped config (8 heads over 4 KV heads, SwiGLU width 8/3 x hidden), initialised by us,
exported to a temporary Hugging Face folder and loaded by transformers in fp32 with SDPA attention.
"""

import tempfile


def llama_pair(hidden: int, layers: int, vocab: int, max_positions: int = 4096, **overrides):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from rosepo_jax import checkpoints, model as model_lib  # pylint: disable=g-import-not-at-top

  cfg = model_lib.ModelConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_layers=layers,
      num_heads=8, num_kv_heads=4, head_dim=hidden // 8, max_position_embeddings=max_positions,
      **overrides)
  ours = model_lib.init_model(cfg, seed=0)
  with tempfile.TemporaryDirectory() as tmp:
    checkpoints.save_hf(ours, tmp)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                               attn_implementation="sdpa")
  return ours, theirs
