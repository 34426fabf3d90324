"""The oracle stage: the SASRec preference oracle (METHOD.md section 4), cross-fitted.

Reads config: oracle (the smoothing factor's settings are `smoothing`, read by negatives).
Consumes: data (the dataset).
Writes: DIR/oracle/model (SASRec on every training user: the reported oracle), DIR/oracle/metrics.json
(its test HitRatio@1 and NDCG@10, next to random and popularity-only ranking measured in the same
run, the same over each eval subset of the test split, e.g. LastFM's llara_last, and each fold
oracle's validation figures); with config.oracle.folds = K > 1,
DIR/oracle/folds.json (each training user's fold) and DIR/oracle/folds/<k> (the fold oracles, each
trained without fold k's users; they score the pairs); DIR/oracle/calibration.json (the
temperature tau of maximum likelihood of the validation choices scored as the pairs are, by the
fold oracles (`calibration`); the NLL at tau = 1 and at the fit; a reliability table). With the
synthetic world, DIR/oracle/metrics.json also holds the Bayes-optimal HitRatio@1 of the test
split (`metrics.bayes_hit_ratio`: the ceiling no recommender can pass).

Every process of a multi-process job trains the same oracles (they are small); the leader writes.
"""

from __future__ import annotations

import numpy as np

from rosepo_jax import metrics as metrics_lib
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.workdir import Context, Paths, Stage, Unit, read_json, single_unit, write_json


def run(ctx: Context, unit: Unit | None = None) -> dict:
  """Trains the oracle and the fold oracles together (`oracle.train_oracles`, each early-stopped
  on validation); returns the oracle's test metrics."""
  del unit
  ds, cfg = ctx.dataset, ctx.config.oracle
  train, val = ds.examples("train"), ds.examples("val")
  sets, names, user_fold = oracle_lib.fold_training_sets(train, cfg.folds, cfg.seed)
  if user_fold:
    write_json(ctx.paths.oracle_folds, {"folds": cfg.folds,
                                        "user_fold": {str(u): k for u, k in user_fold.items()}})
  trained = oracle_lib.train_oracles(sets, val, ds.num_items, cfg, names)
  (oracle, info), folds = trained[0], trained[1:]
  oracle_lib.save_oracle(oracle, ctx.paths.oracle_model)
  fold_oracles, fold_info = [fold for fold, _ in folds], []
  for k, (fold, fold_stats) in enumerate(folds):
    oracle_lib.save_oracle(fold, ctx.paths.oracle_fold_model(k))
    fold_info.append({"fold": k, "train_examples": len(sets[k + 1]), **fold_stats})
  test = ds.examples("test")
  target_pos = np.array([list(e.candidates).index(e.target) for e in test])
  random_scores = np.random.default_rng(cfg.seed).random((len(test), len(test[0].candidates)))
  popularity = ds.train_popularity[np.array([e.candidates for e in test])].astype(float)
  metrics = {**oracle.evaluate(test), **info, "num_examples": len(test),
             "random": oracle_lib.candidate_metrics(random_scores, target_pos),
             "popularity": oracle_lib.candidate_metrics(popularity, target_pos),
             "fold_oracles": fold_info}
  for name, indices in sorted(ds.eval_subsets.get("test", {}).items()):
    metrics.setdefault("subsets", {})[name] = {
        **oracle.evaluate(ds.examples_at("test", indices)), "num_examples": len(indices)}
  if ctx.knows_truth:
    metrics["bayes"] = {"hit_ratio@1": metrics_lib.bayes_hit_ratio(ctx.true_probs("test", test))}
  write_json(ctx.paths.oracle_metrics, metrics)
  write_json(ctx.paths.oracle_calibration,
             calibration(fold_oracles, oracle, user_fold, val, cfg.seed))
  print(f"oracle: test hit_ratio@1 {metrics['hit_ratio@1']:.4f} ndcg@10 {metrics['ndcg@10']:.4f} "
        f"(random {metrics['random']['hit_ratio@1']:.4f}, popularity "
        f"{metrics['popularity']['hit_ratio@1']:.4f}"
        + (f", Bayes ceiling {metrics['bayes']['hit_ratio@1']:.4f}" if "bayes" in metrics else "")
        + "".join(f", subset {name} {sub['hit_ratio@1']:.4f}"
                  for name, sub in metrics.get("subsets", {}).items())
        + f"); {info['epochs']} epochs, "
        f"{info['seconds']} s; {len(fold_oracles)} fold oracles", flush=True)
  return metrics


def calibration(fold_oracles, oracle: oracle_lib.Oracle, user_fold, examples,
                seed: int = 0) -> dict:
  """The temperature fitted on `examples` (validation) by maximum likelihood of their choices
  among their candidates, scored by the oracles that score the pairs: with cross-fitting, each
  example by a fold oracle (its user's training fold, else a seeded fold of the validation
  users: every fold oracle is out-of-sample for them), one tau pooled over the folds; without,
  by `oracle`. With the NLL before and after, a reliability table, and how many examples each
  kind of oracle scored."""
  users = [e.user for e in examples]
  folds = {**oracle_lib.user_folds(users, len(fold_oracles), seed), **user_fold} \
      if fold_oracles else {}
  scores, fold = oracle_lib.cross_fitted_scores(
      fold_oracles, oracle, folds, users, [e.history for e in examples],
      np.array([e.candidates for e in examples]))
  target_pos = np.array([list(e.candidates).index(e.target) for e in examples])
  tau = oracle_lib.fit_temperature(scores, target_pos)
  return {"folds": max(len(fold_oracles), 1), "tau": tau, "val_examples": len(examples),
          "fit": ("one tau pooled over the fold oracles' scores" if fold_oracles
                  else "the oracle's scores"),
          "scored_by": {"fold_oracles": int((fold >= 0).sum()), "oracle": int((fold < 0).sum())},
          "scored_by_fold": [int((fold == k).sum()) for k in range(len(fold_oracles))],
          "nll": {"tau_1": oracle_lib.choice_nll(scores, target_pos, 1.0),
                  "fitted": oracle_lib.choice_nll(scores, target_pos, tau)},
          "reliability": oracle_lib.reliability(scores, target_pos, tau)}


def load_fold_oracles(paths: Paths) -> tuple[list[oracle_lib.Oracle], dict[int, int]]:
  """The fold oracles and each training user's fold ([], {} without cross-fitting)."""
  try:
    folds = read_json(paths.oracle_folds)
  except FileNotFoundError:
    return [], {}
  return ([oracle_lib.load_oracle(paths.oracle_fold_model(k)) for k in range(folds["folds"])],
          {int(u): k for u, k in folds["user_fold"].items()})


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  del unit
  return [paths.oracle]


def _required(config, paths: Paths, unit: Unit) -> list[str]:
  del unit
  folds = config.oracle.folds
  return ([paths.oracle_model, paths.oracle_metrics, paths.oracle_calibration]
          + ([paths.oracle_folds] + [paths.oracle_fold_model(k) for k in range(folds)]
             if folds > 1 else []))


STAGE = Stage(name="oracle", sections=("oracle",), units=single_unit("oracle"),
              inputs=lambda config, unit: [Unit("data")], outputs=_outputs, run=run,
              required=_required)
