"""The oracle stage: the SASRec preference oracle (METHOD.md section 4).

Reads config: oracle (the smoothing factor's settings are `smoothing`, read by negatives).
Consumes: data (the dataset).
Writes: DIR/oracle/model (SASRec), DIR/oracle/metrics.json (test HitRatio@1 and NDCG@10, next
to random and popularity-only ranking measured in the same run) and DIR/oracle/calibration.json
(the temperature tau of maximum likelihood of the validation choices, the NLL at tau = 1 and at the
fit, a reliability table; negatives use the fitted tau when config.smoothing.fit_tau is set).
"""

from __future__ import annotations

import numpy as np

from rosepo_jax import oracle as oracle_lib
from rosepo_jax.workdir import Context, Paths, Stage, Unit, single_unit, write_json


def run(ctx: Context, unit: Unit | None = None) -> dict:
  """Trains the oracle on the training split (early-stopped on validation); returns its test
  metrics."""
  del unit
  ds, cfg = ctx.dataset, ctx.config.oracle
  oracle, info = oracle_lib.train_oracle(ds.examples("train"), ds.examples("val"), ds.num_items,
                                         cfg)
  oracle_lib.save_oracle(oracle, ctx.paths.oracle_model)
  test = ds.examples("test")
  target_pos = np.array([list(e.candidates).index(e.target) for e in test])
  random_scores = np.random.default_rng(cfg.seed).random((len(test), len(test[0].candidates)))
  popularity = ds.train_popularity[np.array([e.candidates for e in test])].astype(float)
  metrics = {**oracle.evaluate(test), **info, "num_examples": len(test),
             "random": oracle_lib.candidate_metrics(random_scores, target_pos),
             "popularity": oracle_lib.candidate_metrics(popularity, target_pos)}
  write_json(ctx.paths.oracle_metrics, metrics)
  write_json(ctx.paths.oracle_calibration, calibration(oracle, ds.examples("val")))
  print(f"oracle: test hit_ratio@1 {metrics['hit_ratio@1']:.4f} ndcg@10 {metrics['ndcg@10']:.4f} "
        f"(random {metrics['random']['hit_ratio@1']:.4f}, popularity "
        f"{metrics['popularity']['hit_ratio@1']:.4f}); {info['epochs']} epochs, "
        f"{info['seconds']} s", flush=True)
  return metrics


def calibration(oracle: oracle_lib.Oracle, examples) -> dict:
  """The oracle's temperature fitted on `examples` (validation) by maximum likelihood of their
  choices among their candidates, with the NLL before and after and a reliability table."""
  scores = oracle.scores([e.history for e in examples], np.array([e.candidates for e in examples]))
  target_pos = np.array([list(e.candidates).index(e.target) for e in examples])
  tau = oracle_lib.fit_temperature(scores, target_pos)
  return {"folds": 1, "tau": tau, "val_examples": len(examples),
          "nll": {"tau_1": oracle_lib.choice_nll(scores, target_pos, 1.0),
                  "fitted": oracle_lib.choice_nll(scores, target_pos, tau)},
          "reliability": oracle_lib.reliability(scores, target_pos, tau)}


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  del unit
  return [paths.oracle]


STAGE = Stage(name="oracle", sections=("oracle",), units=single_unit("oracle"),
              inputs=lambda config, unit: [Unit("data")], outputs=_outputs, run=run,
              required=lambda config, paths, unit: [paths.oracle_model, paths.oracle_metrics,
                                                    paths.oracle_calibration])
