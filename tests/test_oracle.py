"""The SASRec oracle: smoothing factors, metrics, padding, learning, checkpoints, the stage."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rosepo_jax import oracle as O
from conftest import context
from rosepo_jax import pipeline
from rosepo_jax.stages import oracle as oracle_stage
from test_data_pipeline import _config


def test_smoothing_factor_formula_bounds_and_direction():
  cfg = O.SmoothingConfig(lam=0.8, tau=2.0, eps_min=0.05, eps_max=0.45)
  s_w = np.array([3.0, 0.0, -1.0, 5.0])
  s_l = np.array([-2.0, 0.0, 4.0, 5.5])
  want = np.clip(0.8 / (1 + np.exp(-(s_l - s_w) / 2.0)), 0.05, 0.45)
  np.testing.assert_allclose(O.smoothing_factor(s_l, s_w, cfg), want, rtol=1e-12)
  eps = O.smoothing_factor(np.linspace(-10, 10, 101), np.zeros(101), cfg)
  assert np.all(np.diff(eps) >= 0)  # higher when the oracle prefers the rejected item
  assert eps.min() == pytest.approx(0.05) and eps.max() == pytest.approx(0.45)


def test_candidate_metrics_hand_built():
  scores = np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.1], [0.4, 0.4, 0.0]])
  m = O.candidate_metrics(scores, np.array([1, 2, 0]))
  # ranks: 0 (hit), 2, 1 (a tie counts against the target)
  assert m["hit_ratio@1"] == pytest.approx(1 / 3)
  assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(3)) / 3)


def test_left_padding_does_not_change_the_score():
  model = O.SASRec(50, O.OracleConfig(dim=16, max_len=10), nnx.Rngs(params=0, dropout=1))
  model.eval()
  short = jnp.asarray([[3, 7, 9]])
  padded = jnp.asarray(O.pad_histories([[3, 7, 9]], 10, 50))
  np.testing.assert_allclose(np.asarray(model(padded)), np.asarray(model(short)), rtol=1e-5,
                             atol=1e-6)


def test_oracle_stage_learns_beyond_baselines_and_reloads(tmp_path):
  config = _config("synthetic_scratch.py")
  config.oracle.max_epochs = 12
  pipeline.run(config, str(tmp_path), ["data"])
  ctx = context(config, tmp_path)
  some = [0, 3, 4, 9]
  ctx.dataset.eval_subsets = {"test": {"some": some}}  # as LastFM's llara_last
  oracle_stage.run(ctx)
  metrics = json.load(open(tmp_path / "oracle" / "metrics.json"))
  assert metrics["hit_ratio@1"] > 2 * metrics["popularity"]["hit_ratio@1"] > 0
  assert metrics["random"]["hit_ratio@1"] < 0.12
  assert {"hit_ratio@1", "ndcg@10", "epochs", "seconds"} <= set(metrics)
  reloaded = O.load_oracle(str(tmp_path / "oracle" / "model"))
  ds = context(config, tmp_path).dataset
  assert reloaded.evaluate(ds.examples("test"))["hit_ratio@1"] == metrics["hit_ratio@1"]
  assert metrics["subsets"] == {"some": {**reloaded.evaluate(ds.examples_at("test", some)),
                                         "num_examples": 4}}


def test_user_folds_deal_every_user_once_in_balanced_seeded_folds():
  users = [7, 7, 3, 9, 12, 3, 40, 41, 42, 43, 44]  # repeated users count once
  folds = O.user_folds(users, 3, seed=0)
  assert sorted(folds) == sorted(set(users))
  sizes = np.bincount(list(folds.values()), minlength=3)
  assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(set(users)) == 9
  assert folds == O.user_folds(list(reversed(users)), 3, seed=0)  # order of appearance: no matter
  assert any(O.user_folds(users, 3, seed=s) != folds for s in range(1, 5))


class _Fixed:
  """An oracle whose every score is its own id."""

  def __init__(self, value):
    self.value = value

  def scores(self, histories, items_BxC):
    assert len(histories) == len(items_BxC)
    return np.full(np.shape(items_BxC), self.value, np.float32)


def test_cross_fitted_scores_come_from_the_fold_that_left_the_user_out():
  """Each row is scored by oracles[fold of its user]; users outside the folds, or no fold
  oracles at all, go to the fallback (fold -1)."""
  folds = {10: 0, 11: 1, 12: 2, 13: 0}
  users = [11, 13, 99, 12, 10]
  items = np.arange(10).reshape(5, 2)
  s, fold = O.cross_fitted_scores([_Fixed(0.0), _Fixed(1.0), _Fixed(2.0)], _Fixed(-1.0), folds,
                                  users, [[1]] * 5, items)
  np.testing.assert_array_equal(fold, [1, 0, -1, 2, 0])
  np.testing.assert_array_equal(s[:, 0], [1.0, 0.0, -1.0, 2.0, 0.0])
  s, fold = O.cross_fitted_scores([], _Fixed(-1.0), folds, users, [[1]] * 5, items)
  assert (fold == -1).all() and (s == -1.0).all()


def test_fitted_temperature_recovers_a_planted_one():
  """Choices drawn from softmax(scores / 0.5) over 20 candidates: the maximum-likelihood tau is
  0.5 within 5%, and it lowers the NLL below tau = 1's (float64 formula)."""
  rs = np.random.RandomState(0)
  scores = rs.normal(0, 1, (20000, 20))
  p = np.exp(scores / 0.5)
  p /= p.sum(axis=1, keepdims=True)
  target = np.array([rs.choice(20, p=row) for row in p])
  tau = O.fit_temperature(scores, target)
  assert tau == pytest.approx(0.5, rel=0.05)
  assert O.choice_nll(scores, target, tau) < O.choice_nll(scores, target, 1.0)
  want = np.mean(np.log(np.exp(scores / tau).sum(1)) - scores[np.arange(20000), target] / tau)
  assert O.choice_nll(scores, target, tau) == pytest.approx(want, rel=1e-12)
  table = O.reliability(scores, target, tau)
  assert sum(b["examples"] for b in table) == 20000
  for b in table:  # calibrated by construction: observed frequency near the prediction
    if b["examples"] > 500:
      assert abs(b["observed"] - b["predicted"]) < 0.05, b


def _examples(rs, count, num_items=30, users=(0,)):
  """Learnable toy rows: the next item follows the last one; 20 candidates hold the target."""
  rows = []
  for k in range(count):
    history = list(rs.randint(0, num_items, rs.randint(2, 8)))
    target = (history[-1] + 1) % num_items
    others = [i for i in rs.permutation(num_items) if i != target][:19]
    candidates = [int(i) for i in rs.permutation([target] + others)]
    rows.append(SimpleNamespace(user=users[k % len(users)], history=history, target=target,
                                candidates=candidates))
  return rows


def _train_alone(train, val, num_items, cfg):
  """The reference: one SASRec trained by itself with nnx's optimizer, the loop written out
  (seeded shuffle per epoch, full batches, the best validation epoch kept, early stopping)."""
  model = O.SASRec(num_items, cfg, nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1))
  optimizer = nnx.Optimizer(model, optax.adam(cfg.learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, hist, target):
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(hist), target).mean()
    optimizer.update(model, nnx.grad(loss_fn)(model))

  hist = O.pad_histories([e.history for e in train], cfg.max_len, num_items)
  target = np.array([e.target for e in train], np.int32)
  batch, rng, oracle = min(cfg.batch_size, len(hist)), np.random.default_rng(cfg.seed), \
      O.Oracle(model, cfg)
  best, best_epoch, best_state = -1.0, 0, None
  for epoch in range(1, cfg.max_epochs + 1):
    model.train()
    order = rng.permutation(len(hist))
    for i in range(0, len(order) - batch + 1, batch):
      step(model, optimizer, hist[order[i:i + batch]], target[order[i:i + batch]])
    hr = oracle.evaluate(val)["hit_ratio@1"]
    if hr > best:
      best, best_epoch = hr, epoch
      best_state = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    elif epoch - best_epoch >= cfg.patience:
      break
  nnx.update(model, best_state)
  return oracle, {"epochs": epoch, "best_epoch": best_epoch, "val_hit_ratio@1": best}


@pytest.mark.parametrize("dropout,sizes", [(0.2, (300, 200, 250)), (0.0, (300, 40))])
def test_oracles_trained_together_equal_each_trained_alone(dropout, sizes):
  """train_oracles (threads, two at a time) gives each model what training it alone gives:
  sets of different sizes (one smaller than a batch), each with its own dropout stream, the same
  best epoch and early stop, the same scores and parameters."""
  rs = np.random.RandomState(0)
  cfg = O.OracleConfig(dim=16, num_blocks=1, dropout=dropout, max_len=8, batch_size=64,
                       max_epochs=6, patience=2, learning_rate=3e-3)
  sets = [_examples(rs, n) for n in sizes]
  val = _examples(rs, 100)
  together = O.train_oracles(sets, val, 30, cfg, [f"set {k}" for k in range(len(sets))],
                             log=lambda *a: None, workers=2)
  histories, candidates = [e.history for e in val], np.array([e.candidates for e in val])
  for examples, (oracle, info) in zip(sets, together):
    ref, ref_info = _train_alone(examples, val, 30, cfg)
    assert {k: info[k] for k in ref_info} == ref_info
    np.testing.assert_allclose(oracle.scores(histories, candidates),
                               ref.scores(histories, candidates), rtol=1e-5, atol=1e-5)
    got = dict(nnx.state(oracle.model, nnx.Param).flat_state())
    for path, var in nnx.state(ref.model, nnx.Param).flat_state():
      if path[-2:] == ("key", "bias"):
        # Its exact gradient is 0 (it adds one constant to all of a query's logits), so Adam
        # turns round-off into steps of full size: its value is noise that no output sees.
        continue
      np.testing.assert_allclose(np.asarray(got[path].get_value()), np.asarray(var.get_value()),
                                 rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_an_error_in_one_oracle_stops_the_others_and_is_raised():
  """train_oracles with a set that cannot train (no rows) beside one that would train for 50
  epochs: the error is raised, and the other thread stops at its next step instead of finishing."""
  rs = np.random.RandomState(0)
  cfg = O.OracleConfig(dim=16, num_blocks=1, max_len=8, batch_size=64, max_epochs=50,
                       patience=50)
  logged = []
  with pytest.raises(ValueError, match="no training examples"):
    O.train_oracles([_examples(rs, 300), []], _examples(rs, 50), 30, cfg, ["big", "empty"],
                    log=logged.append, workers=2)
  assert len(logged) < 5, logged
