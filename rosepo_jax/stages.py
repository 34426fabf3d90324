"""Training stages: SFT (pi_ref) and preference optimisation for each method in config.methods.

  sft: DIR/sft/{checkpoints,tb} and DIR/sft/model (orbax model dir with the tokenizer)
  oracle: DIR/oracle/model (SASRec) and DIR/oracle/metrics.json (test HitRatio@1, NDCG@10 next to
       random and popularity-only ranking measured in the same run)
  dpo: DIR/preference/random_k{K}.npz (rejected ids + reference log-probs, computed once by the
       SFT model), then DIR/<method>/{checkpoints,tb,model} for each preference method
"""

from __future__ import annotations

import dataclasses
import os

from flax import nnx
import jax
import numpy as np

import json

from rosepo_jax import checkpoints, flops as flops_lib, losses, negatives, oracle as oracle_lib, pipeline
from rosepo_jax import sharding, train
from rosepo_jax import model as model_lib
from rosepo_jax.data import batching
from rosepo_jax.data import candidates as candidates_lib
from rosepo_jax.data.batching import BatchShape, EncodedRow, StepSampler, encode_response


def make_mesh(config):
  """The configured mesh, or None on a single device (then everything runs unsharded)."""
  if jax.device_count() == 1:
    return None
  m = config.get("mesh") or {}
  return sharding.make_mesh(data=m.get("data", -1), fsdp=m.get("fsdp", 1),
                            tensor=m.get("tensor", 1))


def build_model(config, tok) -> model_lib.Decoder:
  """The SFT starting point: a preset trained from scratch, or a pretrained checkpoint.

  From scratch, `model.copy_init_layers` (e.g. ``(-1,)``) gives those layers copy heads at
  init (`model_lib.init_copy_heads`, with `model.copy_init_gain`).
  """
  m = config.model
  if m.get("copy_init_layers") and m.init != "scratch":
    raise ValueError(f"config.model.copy_init_layers={tuple(m.copy_init_layers)} applies only to "
                     f"a model trained from scratch, not to config.model.init={m.init!r}")
  dtypes = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=bool(m.remat))
  if m.init == "scratch":
    vocab = -(-len(tok) // 64) * 64
    overrides = dict(m.get("overrides") or {})
    cfg = model_lib.get_config(m.preset, vocab_size=vocab, bos_token_id=None,
                               eos_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id,
                               **overrides, **dtypes)
    model = model_lib.init_model(cfg, seed=int(m.seed))
    if m.get("copy_init_layers"):
      model = model_lib.init_copy_heads(model, tuple(m.copy_init_layers),
                                        float(m.get("copy_init_gain", 1.0)), seed=int(m.seed))
  else:
    model = checkpoints.load_model(m.init, **dtypes)
    if model.cfg.vocab_size < len(tok):
      raise ValueError(f"config.model.init={m.init}: vocabulary {model.cfg.vocab_size} is "
                       f"smaller than the tokenizer's {len(tok)}")
  if m.get("lora_rank"):
    model = model_lib.add_lora(model, int(m.lora_rank), float(m.lora_alpha), seed=int(m.seed))
  return model


def batch_shape(config) -> BatchShape:
  return BatchShape(max_seq_len=int(config.data.max_seq_len))


def optim_config(section) -> train.OptimConfig:
  fields = {f.name for f in dataclasses.fields(train.OptimConfig)}
  return train.OptimConfig(**{k: v for k, v in section.optim.items() if k in fields})


def loop_config(section, best_metric: str = "") -> train.LoopConfig:
  return train.LoopConfig(num_steps=int(section.steps), log_every=int(section.log_every),
                          eval_every=int(section.eval_every),
                          checkpoint_every=int(section.checkpoint_every),
                          keep_checkpoints=int(section.keep_checkpoints),
                          best_metric=best_metric, best_mode="min")


def _sampler(n: int, section, seed: int) -> StepSampler:
  return StepSampler(n, int(section.batch_size), seed, jax.process_index(), jax.process_count())


def _local_batch(rows, sampler: StepSampler, step: int, shape: BatchShape, num_responses: int):
  """This process's rows of global batch `step`, padded to the global batch's buckets."""
  global_rows = [rows[i] for i in sampler.global_indices(step)]
  local = [rows[i] for i in sampler.local_indices(step)]
  return sampler.local_indices(step), batching.make_batch(local, shape, num_responses,
                                                          bucket_rows=global_rows)


def _eval_loss_fn(trainer: train.Trainer, loss_fn, rows, shape, num_responses, batch_size,
                  extra=None):
  """Mean loss over `rows` (e.g. validation) with the current parameters, batched and jitted."""
  @jax.jit
  def eval_step(params, frozen, batch):
    total, denom, _ = loss_fn(nnx.merge(trainer.graphdef, params, frozen["rest"]), batch)
    return total, denom

  def evaluate(state: train.TrainState) -> dict:
    total, denom = 0.0, 0.0
    for idx in batching.eval_batches(len(rows), batch_size):
      batch = batching.make_batch([rows[i] if i >= 0 else None for i in idx], shape,
                                  num_responses, bucket_rows=[rows[i] for i in idx if i >= 0])
      if extra:
        batch.update(extra(idx))
      t, d = eval_step(state.params, trainer.frozen, batch)
      total, denom = total + float(t), denom + float(d)
    return {"loss": total / max(denom, 1.0)}
  return evaluate


def batch_flops_fn(cfg: model_lib.ModelConfig, lora: bool, online_reference: bool = False):
  """Model FLOPs of a train step from this process's batch (LM head at scored tokens only; an
  online reference adds its forward)."""
  def fn(batch) -> float:
    tokens = float((batch["segments"] > 0).sum())
    scored = float((batch["score_seg"] >= 0).sum())
    seq = batch["tokens"].shape[1]
    total = flops_lib.train_flops(cfg, tokens, seq, scored, 0.0 if lora else 1.0)
    if online_reference:
      total += flops_lib.train_flops(cfg, tokens, seq, scored) / 3.0
    return jax.process_count() * total
  return fn


def save_model(model, folder: str, tok) -> None:
  if jax.process_index() == 0:
    checkpoints.save_orbax(model, folder, tokenizer=tok)


def curriculum_phases(config, ds, tok) -> list[tuple[int, list[EncodedRow]]]:
  """(end step, training rows) for each phase of `config.sft.candidate_curriculum`.

  The curriculum is a tuple of (end_step, shown) pairs: before `end_step`, each training prompt
  shows `shown` of its candidates (the target among them, `candidates.curriculum_subset`) and
  says so ("which one of these {n}"); from the last end step on, the full prompts. Few candidates
  make copying a candidate's title easy to discover; a from-scratch model learns it several
  times faster this way than from the full prompts (docs/results.md, session 6).
  """
  raw = config.sft.get("candidate_curriculum") or ()
  num_candidates = int(config.data.num_candidates)
  error = ValueError(f"config.sft.candidate_curriculum={raw}: expected (end_step, shown) pairs "
                     f"with increasing end steps > 0 and 1 <= shown < {num_candidates}")
  try:
    phases = [(int(end), int(shown)) for end, shown in raw]
  except (TypeError, ValueError):
    raise error from None
  ends = [end for end, _ in phases]
  if (ends != sorted(set(ends)) or (ends and ends[0] <= 0)
      or any(not 1 <= shown < num_candidates for _, shown in phases)):
    raise error
  seed = int(config.data.seed)
  examples = ds.examples("train")
  responses = [r for _, r in pipeline.encoded_examples(config, ds, tok, "train")]
  out = []
  for end, shown in phases:
    texts = [pipeline.example_prompt(config, ds, "train", ex, candidate_titles=(
        candidates_lib.curriculum_subset(ex.candidate_titles, ex.target_title, shown, seed,
                                         "train", ex.index))) for ex in examples]
    out.append((end, [EncodedRow(p, (r,))
                      for p, r in zip(batching.encode_prompts(tok, texts), responses)]))
  return out


def rows_at_step(phases: list[tuple[int, list[EncodedRow]]], rows: list[EncodedRow],
                 step: int) -> list[EncodedRow]:
  """The training rows of `step`: its curriculum phase's, or the full `rows` after the last."""
  return next((phase_rows for end, phase_rows in phases if step < end), rows)


def run_sft(config, workdir: str) -> dict:
  """Supervised fine-tuning on (prompt, target title + EOS); the result is pi_ref.

  With `config.sft.candidate_curriculum`, the first steps train on prompts that show fewer
  candidates (`curriculum_phases`).
  """
  ds = pipeline.open_dataset(config, workdir)
  tok = pipeline.load_tokenizer(config, workdir)
  rows = [EncodedRow(p, (r,)) for p, r in pipeline.encoded_examples(config, ds, tok, "train")]
  phases = curriculum_phases(config, ds, tok)
  val = [EncodedRow(p, (r,)) for p, r in pipeline.encoded_examples(config, ds, tok, "val")]
  val = val[:int(config.sft.eval_examples)]
  section, shape = config.sft, batch_shape(config)
  trainer = train.Trainer(build_model(config, tok), train.sft_loss_fn(int(config.vocab_chunk)),
                          train.make_optimizer(optim_config(section), int(section.steps)),
                          mesh=make_mesh(config), accum_steps=int(section.accum_steps))
  sampler = _sampler(len(rows), section, int(config.data.seed))
  evaluate = _eval_loss_fn(trainer, train.sft_loss_fn(int(config.vocab_chunk)), val, shape, 1,
                           int(section.batch_size)) if val else None
  state, metrics = train.train_loop(
      trainer,
      lambda step: _local_batch(rows_at_step(phases, rows, step), sampler, step, shape, 1)[1],
      loop_config(section, best_metric="loss" if evaluate else ""),
      os.path.join(workdir, "sft"), evaluate,
      batch_flops=batch_flops_fn(trainer.model_cfg, bool(config.model.get("lora_rank"))))
  save_model(model_lib.merge_lora(trainer.model(state.params)),
             os.path.join(workdir, "sft", "model"), tok)
  print(f"sft: {state.step} steps, validation {metrics}", flush=True)
  return metrics


def preference_data(config, workdir: str, ds, tok, num_rejected: int,
                    with_reference: bool = True):
  """Rows (prompt, chosen, k random rejected) and reference log-probs [N, k+1], computed once
  by the SFT model and cached in DIR/preference/random_k{k}.npz (None without reference)."""
  limit = int(config.preference.get("max_prompts") or 0)
  prompts_and_targets = pipeline.encoded_examples(config, ds, tok, "train", limit)
  examples = ds.examples("train", limit)
  seed = int(config.data.seed)
  rejected = np.array([negatives.random_rejected(ex.candidates, ex.target, num_rejected, seed,
                                                 "train", ex.index) for ex in examples])
  rows = [EncodedRow(p, (r,) + tuple(encode_response(tok, ds.titles[j]) for j in rej))
          for (p, r), rej in zip(prompts_and_targets, rejected)]
  if not with_reference:
    return rows, None
  path = os.path.join(workdir, "preference", f"random_k{num_rejected}.npz")
  if os.path.isfile(path):
    cached = np.load(path)
    if np.array_equal(cached["rejected"], rejected):
      return rows, cached["ref_logps"]
  from rosepo_jax import generate  # pylint: disable=g-import-not-at-top
  reference = checkpoints.load_orbax(os.path.join(workdir, "sft", "model"))
  ref = generate.score_responses(reference, rows, batch_size=int(config.preference.batch_size),
                                 shape=batch_shape(config), vocab_chunk=int(config.vocab_chunk))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if jax.process_index() == 0:
    np.savez(path + ".tmp.npz", rejected=rejected, ref_logps=ref)
    os.replace(path + ".tmp.npz", path)
  return rows, ref


ROSEPO_ABLATIONS = ("rosepo_no_smoothing", "rosepo_no_self_hard", "rosepo_no_semantic",
                    "rosepo_no_popularity")


def rosepo_data(workdir: str, method: str):
  """Rows (prompt, chosen, that prompt's rejected responses), reference log-probs [N, K+1] and
  eps [N, K] from the negatives stage; ablations drop a strategy or the smoothing."""
  dropped = {"rosepo_no_self_hard": {"self_hard"},
             "rosepo_no_semantic": {"semantic", "hallucination"},
             "rosepo_no_popularity": {"popularity"}}.get(method, set())
  groups: dict[int, list[dict]] = {}
  for pair in read_pairs(workdir):
    if pair["strategy"] not in dropped:
      groups.setdefault(pair["example"], []).append(pair)
  if not groups:
    raise ValueError(f"{method}: no preference pairs left (negatives stage output is empty)")
  k = max(len(g) for g in groups.values())
  rows, ref, eps = [], np.zeros((len(groups), k + 1), np.float32), np.zeros((len(groups), k),
                                                                           np.float32)
  for n, pairs in enumerate(groups.values()):
    rejected = tuple(tuple(p["rejected"]) for p in pairs) + ((),) * (k - len(pairs))
    rows.append(EncodedRow(tuple(pairs[0]["prompt"]), (tuple(pairs[0]["chosen"]),) + rejected))
    ref[n, 0] = pairs[0]["ref_logps"][0]
    ref[n, 1:len(pairs) + 1] = [p["ref_logps"][1] for p in pairs]
    if method != "rosepo_no_smoothing":
      eps[n, :len(pairs)] = [p["eps"] for p in pairs]
  return rows, ref, eps


def cdpo_eps(config, workdir: str) -> float:
  """cDPO's constant eps: config.preference.cdpo_eps, or with a negative value RosePO's mean eps
  over the negatives stage's pairs (the comparison METHOD.md's results ask for)."""
  value = float(config.preference.cdpo_eps)
  if value >= 0:
    return value
  return float(np.mean([p["eps"] for p in read_pairs(workdir)]))


def uses_rosepo_pairs(config, method: str) -> bool:
  return method.startswith("rosepo") or (method in ("cdpo", "rdpo")
                                         and float(config.preference.cdpo_eps) < 0)


def _method_num_rejected(config, method: str) -> int:
  return int(config.preference.sdpo_k) if method == "sdpo" else 1


def check_methods(config) -> None:
  unknown = [m for m in config.methods if m != "sft" and m not in losses.METHODS + ROSEPO_ABLATIONS]
  if unknown:
    raise ValueError(f"config.methods has unknown methods {unknown}; expected sft or some of "
                     f"{list(losses.METHODS + ROSEPO_ABLATIONS)}")


def run_preference(config, workdir: str) -> dict:
  """Trains every preference method of config.methods from the SFT model."""
  check_methods(config)
  return {m: run_preference_method(config, workdir, m) for m in config.methods if m != "sft"}


def run_preference_method(config, workdir: str, method: str) -> int:
  """Trains one preference method from DIR/sft/model; writes DIR/<method>/{checkpoints,tb,model}
  and returns the number of steps trained."""
  ds = pipeline.open_dataset(config, workdir)
  tok = pipeline.load_tokenizer(config, workdir)
  section, shape = config.preference, batch_shape(config)
  reference_kind = section.get("reference", "precomputed")
  if reference_kind not in ("precomputed", "online"):
    raise ValueError(f"config.preference.reference={reference_kind!r}; expected precomputed or "
                     "online")
  online = reference_kind == "online"
  eps_table = None
  if method.startswith("rosepo"):
    rows, ref, eps_table = rosepo_data(workdir, method)
    k = len(rows[0].responses) - 1
  else:
    k = _method_num_rejected(config, method)
    rows, ref = preference_data(config, workdir, ds, tok, k, with_reference=not online)
  eps_value = cdpo_eps(config, workdir) if method in ("cdpo", "rdpo") else 0.0
  loss_fn = train.preference_loss_fn("rosepo" if method.startswith("rosepo") else method, k,
                                     float(section.beta), int(config.vocab_chunk),
                                     rosepo_form=str(section.rosepo_form),
                                     sft_weight=float(section.sft_weight))
  sft_dir = os.path.join(workdir, "sft", "model")
  model = checkpoints.load_orbax(sft_dir)
  lora_rank = int(config.model.get("lora_rank") or 0)
  if lora_rank:
    model = model_lib.add_lora(model, lora_rank, float(config.model.lora_alpha),
                               seed=int(config.model.seed))
  # With LoRA the frozen base is the reference; otherwise a second copy runs in each step.
  reference = checkpoints.load_orbax(sft_dir) if online and not lora_rank else None
  trainer = train.Trainer(model, loss_fn,
                          train.make_optimizer(optim_config(section), int(section.steps)),
                          mesh=make_mesh(config), accum_steps=int(section.accum_steps),
                          reference_model=reference, online_reference=online and bool(lora_rank))
  sampler = _sampler(len(rows), section, int(config.data.seed) + 1)

  def batch_fn(step):
    idx, batch = _local_batch(rows, sampler, step, shape, k + 1)
    if not online:
      batch["ref_logps"] = ref[idx]
    batch["eps"] = (eps_table[idx] if eps_table is not None
                    else np.full((len(idx), k), eps_value, np.float32))
    return batch

  state, _ = train.train_loop(trainer, batch_fn, loop_config(section),
                              os.path.join(workdir, method),
                              batch_flops=batch_flops_fn(trainer.model_cfg, bool(lora_rank), online))
  save_model(model_lib.merge_lora(trainer.model(state.params)),
             os.path.join(workdir, method, "model"), tok)
  print(f"{method}: {state.step} steps on {len(rows)} prompts (k={k})", flush=True)
  return int(state.step)


def run_oracle(config, workdir: str) -> dict:
  """Trains the SASRec preference oracle; writes DIR/oracle/{model,metrics.json}."""
  ds = pipeline.open_dataset(config, workdir)
  fields = {f.name for f in dataclasses.fields(oracle_lib.OracleConfig)}
  cfg = oracle_lib.OracleConfig(**{k: v for k, v in config.oracle.items() if k in fields})
  if cfg.max_len < int(config.data.max_history):
    raise ValueError(f"config.oracle.max_len={cfg.max_len} < config.data.max_history")
  oracle, info = oracle_lib.train_oracle(ds.examples("train"), ds.examples("val"), ds.num_items,
                                         cfg)
  folder = os.path.join(workdir, "oracle")
  if jax.process_index() == 0:
    oracle_lib.save_oracle(oracle, os.path.join(folder, "model"))
  test = ds.examples("test")
  target_pos = np.array([list(e.candidates).index(e.target) for e in test])
  random_scores = np.random.default_rng(cfg.seed).random((len(test), len(test[0].candidates)))
  popularity = ds.train_popularity[np.array([e.candidates for e in test])].astype(float)
  metrics = {**oracle.evaluate(test), **info, "num_examples": len(test),
             "random": oracle_lib.candidate_metrics(random_scores, target_pos),
             "popularity": oracle_lib.candidate_metrics(popularity, target_pos)}
  if jax.process_index() == 0:
    with open(os.path.join(folder, "metrics.json"), "w") as f:
      json.dump(metrics, f, indent=2)
  print(f"oracle: test hit_ratio@1 {metrics['hit_ratio@1']:.4f} ndcg@10 {metrics['ndcg@10']:.4f} "
        f"(random {metrics['random']['hit_ratio@1']:.4f}, popularity "
        f"{metrics['popularity']['hit_ratio@1']:.4f}); {info['epochs']} epochs, "
        f"{info['seconds']} s", flush=True)
  return metrics


# ------------------------------------------------------------------------------------------------
# Negatives: the preference dataset of RosePO (METHOD.md sections 3 and 4).

PAIRS_FILE = "pairs.array_record"


def run_negatives(config, workdir: str) -> dict:
  """Builds DIR/preference/pairs.array_record and DIR/preference/stats.json.

  One pair per enabled strategy per prompt (chosen = the target title), plus a pair for each SFT
  answer that matches no candidate (a real hallucination). Each pair stores the prompt ids, the
  chosen and rejected token ids, its strategy, eps (oracle; semantic and hallucination pairs get
  `semantic_eps`) and the reference log-probs of chosen and rejected under the SFT model.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from rosepo_jax import evaluation, generate, metrics  # pylint: disable=g-import-not-at-top

  if not any(uses_rosepo_pairs(config, m) for m in config.methods):
    print("negatives: skipped (no method in config.methods uses RosePO's pairs)", flush=True)
    return {}
  section = config.negatives
  strategies = list(section.strategies)
  unknown = [s for s in strategies if s not in negatives.STRATEGIES]
  if unknown:
    raise ValueError(f"config.negatives.strategies has unknown {unknown}; expected some of "
                     f"{list(negatives.STRATEGIES)}")
  ds = pipeline.open_dataset(config, workdir)
  tok = pipeline.load_tokenizer(config, workdir)
  limit = int(section.get("max_prompts") or 0)
  examples = ds.examples("train", limit)
  encoded = pipeline.encoded_examples(config, ds, tok, "train", limit)
  seed, batch = int(config.data.seed), int(section.batch_size)
  reference = checkpoints.load_orbax(os.path.join(workdir, "sft", "model"))
  oracle = oracle_lib.load_oracle(os.path.join(workdir, "oracle", "model"))
  title_ids = [encode_response(tok, t)[:-1] or (tok.eos_token_id,) for t in ds.titles]

  answers = (evaluation.greedy_answers(reference, tok, [p for p, _ in encoded], batch,
                                       int(section.max_new_tokens))
             if "self_hard" in strategies or "semantic" in strategies else [""] * len(encoded))
  answer_items = []
  for ex, answer in zip(examples, answers):
    pos = metrics.match_exact(answer, ex.candidate_titles)
    answer_items.append(None if pos is None else ex.candidates[pos])
  needs_scores = [i for i, (ex, item) in enumerate(zip(examples, answer_items))
                  if "self_hard" in strategies and (item is None or item == ex.target)]
  cand_logps = {}
  if needs_scores:
    rows = [EncodedRow(encoded[i][0], tuple(title_ids[c] + (tok.eos_token_id,)
                                            for c in examples[i].candidates))
            for i in needs_scores]
    scores = generate.score_responses(reference, rows, batch_size=max(batch // 4, 1),
                                      shape=batch_shape(config),
                                      vocab_chunk=int(config.vocab_chunk))
    cand_logps = dict(zip(needs_scores, scores))
  embeddings = None
  if "semantic" in strategies:
    embeddings = negatives.title_embeddings(title_ids, np.asarray(reference.embed[...], np.float32))

  pairs = []  # (example position, strategy, rejected item or -1, rejected token ids)
  for i, ex in enumerate(examples):
    for strategy in strategies:
      if strategy == "random":
        item = negatives.random_rejected(ex.candidates, ex.target, 1, seed, "train", ex.index)[0]
      elif strategy == "popularity":
        item = negatives.popularity_rejected(ex.candidates, ex.target, ds.train_popularity,
                                             float(section.popularity_alpha), seed, "train",
                                             ex.index)
      elif strategy == "semantic":
        item = negatives.semantic_rejected(ex.candidates, ex.target, embeddings.copy())
      else:
        item = negatives.self_hard_choice(answer_items[i], ex.candidates, ex.target,
                                          cand_logps.get(i, np.zeros(len(ex.candidates))))
      pairs.append((i, strategy, item, title_ids[item] + (tok.eos_token_id,)))
    if "semantic" in strategies and answer_items[i] is None and answers[i]:
      hallucination = tuple(tok(" " + answers[i], add_special_tokens=False)["input_ids"])
      pairs.append((i, "hallucination", -1, hallucination + (tok.eos_token_id,)))

  # Smoothing factors from the oracle: s(u, y_l) vs s(u, y_w).
  oracle_cfg = oracle.cfg
  eps = np.full(len(pairs), float(section.semantic_eps), np.float32)
  scored = [k for k, p in enumerate(pairs) if p[1] not in ("semantic", "hallucination")]
  if scored:
    hist = [examples[pairs[k][0]].history for k in scored]
    items = np.array([[examples[pairs[k][0]].target, pairs[k][2]] for k in scored])
    s = oracle.scores(hist, items)
    eps[scored] = oracle_lib.smoothing_factor(s[:, 1], s[:, 0], oracle_cfg)
  # Reference log-probs of chosen and rejected, once.
  rows = [EncodedRow(encoded[i][0], (encoded[i][1], rejected)) for i, _, _, rejected in pairs]
  ref = generate.score_responses(reference, rows, batch_size=batch, shape=batch_shape(config),
                                 vocab_chunk=int(config.vocab_chunk))

  folder = os.path.join(workdir, "preference")
  os.makedirs(folder, exist_ok=True)
  if jax.process_index() == 0:
    tmp = os.path.join(folder, PAIRS_FILE + ".tmp")
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    for k, (i, strategy, item, rejected) in enumerate(pairs):
      writer.write(json.dumps({
          "example": int(examples[i].index), "strategy": strategy, "prompt": list(encoded[i][0]),
          "chosen": list(encoded[i][1]), "rejected": list(rejected), "rejected_item": int(item),
          "eps": float(eps[k]), "ref_logps": [float(ref[k, 0]), float(ref[k, 1])]}).encode())
    writer.close()
    os.replace(tmp, os.path.join(folder, PAIRS_FILE))
  kinds = {"hit": 0, "valid_miss": 0, "hallucination": 0}
  for ex, item in zip(examples, answer_items):
    kinds["hallucination" if item is None else "hit" if item == ex.target else "valid_miss"] += 1
  names = [p[1] for p in pairs]
  stats = {"prompts": len(examples), "pairs": len(pairs), "per_strategy": {},
           "sft_answers": {k: v / max(len(examples), 1) for k, v in kinds.items()}}
  for name in sorted(set(names)):
    e = eps[[k for k, n in enumerate(names) if n == name]]
    stats["per_strategy"][name] = {
        "pairs": int(len(e)), "eps_mean": float(e.mean()),
        **{f"eps_p{q}": float(np.percentile(e, q)) for q in (10, 50, 90)}}
  if jax.process_index() == 0:
    with open(os.path.join(folder, "stats.json"), "w") as f:
      json.dump(stats, f, indent=2)
  print(f"negatives: {len(pairs)} pairs for {len(examples)} prompts; SFT answers "
        + ", ".join(f"{k} {v:.2f}" for k, v in stats["sft_answers"].items()), flush=True)
  return stats


def read_pairs(workdir: str) -> list[dict]:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "preference", PAIRS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found; run the negatives stage first")
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return [json.loads(r) for r in reader.read_all()]
  finally:
    reader.close()


def run_export_one(config, workdir: str, run: str) -> dict:
  """DIR/export/<run>/: a Hugging Face folder (safetensors, config, tokenizer) of a trained run
  (LoRA runs were merged when saved), loadable by transformers' Auto classes."""
  folder = os.path.join(workdir, "export", run)
  model = checkpoints.load_orbax(os.path.join(workdir, run, "model"))
  summary = {}
  if jax.process_index() == 0:
    dtype = (config.get("export") or {}).get("dtype") or None
    summary = checkpoints.save_hf(model, folder, tokenizer=pipeline.load_tokenizer(config, workdir),
                                  dtype=dtype)
  print(f"export {run}: {folder}", flush=True)
  return summary
