"""The embedded default: a synthetic recommendation world (rosepo_jax/data/synthetic.py)."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", manual_dir="", seed=0, num_candidates=20, max_history=10, min_history=3,
      max_seq_len=512,
      world=dict(num_items=240, num_genres=8, num_users=600, min_len=6, max_len=16, zipf=1.0,
                 pop_exponent=1.0, taste_concentration=0.3, drift=0.15, in_genre=0.85,
                 val_fraction=0.1, test_fraction=0.1)))
  c.prompt = ml_collections.ConfigDict(dict(domain="", templates=[]))
  c.tokenizer = ml_collections.ConfigDict(dict(kind="bpe", vocab_size=1024, path=""))
  # A small Llama trained from scratch on the synthetic world.
  c.model = ml_collections.ConfigDict(dict(
      init="scratch", preset="tiny", seed=0, dtype="float32", param_dtype="float32", remat=False,
      lora_rank=0, lora_alpha=16.0,
      overrides=dict(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                     num_kv_heads=2, head_dim=32, max_position_embeddings=512)))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.vocab_chunk = 8192
  c.methods = ["sft", "dpo"]
  c.sft = ml_collections.ConfigDict(dict(
      steps=300, batch_size=32, accum_steps=1, log_every=10, eval_every=100,
      checkpoint_every=100, keep_checkpoints=2, eval_examples=128,
      optim=dict(learning_rate=1e-3, warmup_steps=30, decay="cosine", min_lr_ratio=0.1,
                 weight_decay=0.01, max_grad_norm=1.0)))
  c.preference = ml_collections.ConfigDict(dict(
      steps=100, batch_size=16, accum_steps=1, log_every=10, eval_every=0, checkpoint_every=50,
      keep_checkpoints=2, beta=1.0, sdpo_k=3, cdpo_eps=0.1, rosepo_form="conservative",
      sft_weight=0.0, max_prompts=0,
      optim=dict(learning_rate=1e-5, warmup_steps=10, decay="linear", min_lr_ratio=0.0,
                 weight_decay=0.0, max_grad_norm=1.0)))
  return c
