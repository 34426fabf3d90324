"""The preference stage ("dpo"): one unit per method of config.methods, each trained from pi_ref.

Reads config: preference, model.lora_rank, model.lora_alpha, model.seed, smoothing.cdpo_eps,
vocab_chunk; the method's row of `rosepo_jax.methods.METHODS`.
Consumes: data, sft (the starting point and pi_ref), and negatives for a method that reads its
pairs (`methods.uses_negatives`).
Writes: DIR/<method>/reference.npz (random-pairs methods with a precomputed reference: the
rejected ids and pi_ref log-probs, made by this unit), DIR/<method>/{checkpoints,tb,metrics.jsonl}
DIR/<method>/model (orbax model dir, LoRA merged in float32) and, with LoRA, DIR/<method>/adapter
(the adapters alone, a PEFT folder; their base is the SFT model, with hybrid item embeddings
folded into its title rows as in its export).
"""

from __future__ import annotations

import numpy as np

from rosepo_jax import backbone, checkpoints, files, methods, negatives, scoring, train
from rosepo_jax import model as model_lib
from rosepo_jax.data.batching import EncodedRow
from rosepo_jax.workdir import Context, Paths, Stage, Unit, load_npz, read_records, save_npz

_PAIRS_HINT = "run the negatives stage first"


def random_pairs(ctx: Context, method: str, num_rejected: int, with_reference: bool):
  """Rows (prompt, chosen, k random rejected) and reference log-probs [N, k+1] by the SFT model
  (None without reference), saved in DIR/<method>/reference.npz and reused on a resume."""
  section = ctx.config.preference
  examples, encoded = ctx.preference_sample(section.max_prompts)
  seed = ctx.config.data.seed
  rejected = np.array([negatives.random_rejected(ex.candidates, ex.target, num_rejected, seed,
                                                 "train", ex.index) for ex in examples])
  rows = [EncodedRow(p, (r,) + tuple(ctx.codec.encode_response(ctx.dataset.titles[j])
                                     for j in rej))
          for (p, r), rej in zip(encoded, rejected)]
  if not with_reference:
    return rows, None
  path = ctx.paths.reference(method)
  if files.isfile(path):
    cached = load_npz(path)
    if np.array_equal(cached["rejected"], rejected):
      return rows, cached["ref_logps"]
  reference = checkpoints.load_orbax(ctx.paths.model("sft"), mesh=ctx.mesh())
  ref = scoring.score_responses(reference, rows, batch_size=section.batch_size,
                                shape=ctx.batch_shape, vocab_chunk=ctx.config.vocab_chunk,
                                desc="reference log-probs")
  save_npz(path, rejected=rejected, ref_logps=ref)
  return rows, ref


def negatives_pairs(ctx: Context, method: methods.Method):
  """Rows (prompt, chosen, that prompt's rejected responses), reference log-probs [N, K+1], eps
  [N, K] and loss weights [N, K] from the negatives stage's pairs, without the method's dropped
  strategies; eps is 0 unless the method takes it from the pairs; a pair's weight is its
  strategy's in config.preference.strategy_weights (default 1; 0 for padding)."""
  weight_of = ctx.config.preference.strategy_weights
  groups: dict[int, list[dict]] = {}
  for pair in read_records(ctx.paths.pairs, _PAIRS_HINT):
    if pair["strategy"] not in method.dropped:
      groups.setdefault(pair["example"], []).append(pair)
  if not groups:
    raise ValueError(f"{ctx.paths.pairs}: no preference pairs left (the negatives stage's output "
                     "is empty, or every strategy is dropped)")
  k = max(len(g) for g in groups.values())
  rows, ref = [], np.zeros((len(groups), k + 1), np.float32)
  eps = np.zeros((len(groups), k), np.float32)
  weights = np.zeros((len(groups), k), np.float32)
  for n, pairs in enumerate(groups.values()):
    rejected = tuple(tuple(p["rejected"]) for p in pairs) + ((),) * (k - len(pairs))
    rows.append(EncodedRow(tuple(pairs[0]["prompt"]), (tuple(pairs[0]["chosen"]),) + rejected))
    ref[n, 0] = pairs[0]["ref_logps"][0]
    ref[n, 1:len(pairs) + 1] = [p["ref_logps"][1] for p in pairs]
    if method.per_pair_eps:
      key = "eps_world" if method.eps == "world" else "eps"
      eps[n, :len(pairs)] = [p[key] for p in pairs]
    weights[n, :len(pairs)] = [float(weight_of.get(p["strategy"], 1.0)) for p in pairs]
  return rows, ref, eps, weights


def mean_oracle_eps(pairs: list[dict]) -> float:
  """The mean eps of the pairs whose eps the oracle gave (rejected item a candidate); pairs with
  a fixed eps (semantic negatives, hallucinations: smoothing.semantic_eps) would dilute it."""
  scored = [p["eps"] for p in pairs if negatives.scored_by_oracle(p["strategy"])]
  if not scored:
    raise ValueError("cdpo_eps < 0 asks for the mean oracle eps, but no pair's eps came from the "
                     "oracle (no random, popularity or self_hard pairs); set "
                     "config.smoothing.cdpo_eps >= 0")
  return float(np.mean(scored))


def constant_eps(ctx: Context) -> float:
  """cDPO's constant eps: config.smoothing.cdpo_eps, or with a negative value the mean oracle eps
  over the negatives stage's candidate pairs (the comparison METHOD.md's results ask for)."""
  value = ctx.config.smoothing.cdpo_eps
  if value >= 0:
    return value
  return mean_oracle_eps(read_records(ctx.paths.pairs, _PAIRS_HINT))


def run(ctx: Context, unit: Unit) -> int:
  """Trains method `unit.run` from DIR/sft/model; returns the number of steps trained."""
  config, section, name = ctx.config, ctx.config.preference, unit.run
  method = config.method(name)
  online = section.reference == "online"
  weights = None
  if method.pairs == "negatives":
    rows, ref, eps_table, weights = negatives_pairs(ctx, method)
    k = len(rows[0].responses) - 1
  else:
    k = config.num_rejected(name)
    rows, ref = random_pairs(ctx, name, k, with_reference=not online)
    eps_table = np.full((len(rows), k), constant_eps(ctx) if method.eps == "constant" else 0.0,
                        np.float32)
  loss_fn = train.preference_loss_fn(methods.objective(method, section.rosepo_form), k,
                                     section.beta, config.vocab_chunk,
                                     sft_weight=section.sft_weight)
  sft_model = checkpoints.load_orbax(ctx.paths.model("sft"), mesh=ctx.mesh())
  lora = bool(config.model.lora_rank)
  if lora:  # the adapters apply to the SFT export, whose title rows hold the item projection
    sft_model = model_lib.fold_item_embeddings(sft_model)
  model = backbone.add_lora(config.model, sft_model, ctx.codec)
  # With LoRA the frozen base is the reference; otherwise a second copy runs in each step.
  reference = checkpoints.load_orbax(ctx.paths.model("sft"), mesh=ctx.mesh()) if online and not lora else None
  trainer = train.Trainer(model, loss_fn, train.make_optimizer(section.optim, section.steps),
                          mesh=ctx.mesh(), accum_steps=section.accum_steps,
                          reference_model=reference, online_reference=online and lora)
  sampler = train.step_sampler(len(rows), section.batch_size,
                               config.data.seed + config.model.seed + 1)

  def batch_fn(step):
    idx, batch = sampler.local_batch(rows, step, ctx.batch_shape, k + 1)
    if not online:
      batch["ref_logps"] = ref[idx]
    batch["eps"] = eps_table[idx]
    if weights is not None and any(w != 1.0 for w in config.preference.strategy_weights.values()):
      batch["weights"] = weights[idx]
    return batch

  state, _ = train.train_loop(trainer, batch_fn, section.loop(), ctx.paths.run(name),
                              batch_flops=train.batch_flops_fn(trainer.model_cfg, lora, online))
  train.save_trained(trainer, state, ctx.paths.model(name), ctx.codec,
                     ctx.paths.adapter(name))
  print(f"{name}: {state.step} steps on {len(rows)} prompts (k={k})", flush=True)
  return int(state.step)


def _inputs(config, unit: Unit) -> list[Unit]:
  return [Unit("data"), Unit("sft")] + ([Unit("negatives")] if config.uses_negatives(unit.run)
                                        else [])


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  return [paths.run(unit.run)]


def _method_row(config, unit: Unit) -> dict:
  """The method's row of the table, as part of its unit's key."""
  method = config.method(unit.run)
  return {"objective": method.objective.__name__, "rejected": method.rejected,
          "pairs": method.pairs, "eps": method.eps, "dropped": sorted(method.dropped)}


STAGE = Stage(
    name="dpo",
    sections=("preference", "model.lora_rank", "model.lora_alpha", "model.seed",
              "smoothing.cdpo_eps", "vocab_chunk"),
    units=lambda config: [Unit("dpo", m) for m in config.trained_runs],
    inputs=_inputs, outputs=_outputs, run=run, key_extra=_method_row,
    required=lambda config, paths, unit: [paths.model(unit.run)], per_seed=True)
