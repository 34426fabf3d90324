"""The synthetic world knows the truth: each window's true next-item probabilities, the Bayes
ceiling and the ideal eps (rosepo_jax/data/synthetic.py, metrics.bayes_hit_ratio,
oracle.world_eps)."""

import numpy as np
import pytest

from rosepo_jax import metrics
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.data import synthetic
from rosepo_jax.data.candidates import sample_candidates


def _written_out(cfg, popularity, genre_items, state) -> np.ndarray:
  """The generator's next-item distribution, written out with loops in float64: this step's
  drift redraws the genre from the taste with probability drift; then with probability in_genre
  (while the genre has unconsumed items) an item of the genre, else any item, each drawn
  proportionally to popularity among the unconsumed; with probability exposure_noise instead a
  uniform unconsumed item."""
  items = range(cfg.num_items)
  free = [i for i in items if i not in state.consumed]
  out = np.zeros(cfg.num_items)
  for g in range(cfg.num_genres):
    p_genre = cfg.drift * state.taste[g] + (1 - cfg.drift) * (g == state.genre)
    pool = [i for i in genre_items[g] if i not in state.consumed]
    for i in free:
      anywhere = popularity[i] / sum(popularity[j] for j in free)
      in_genre = popularity[i] / sum(popularity[j] for j in pool) if i in pool else 0.0
      a = cfg.in_genre if pool else 0.0
      out[i] += (1 - cfg.exposure_noise) * p_genre * (a * in_genre + (1 - a) * anywhere)
  for i in free:
    out[i] += cfg.exposure_noise / len(free)
  return out


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_recorded_probabilities_are_the_generators(noise):
  """On hand-picked windows of a small world: each row `world_truth` records equals the
  distribution written out from the window's latent state (1e-6), gives the consumed items 0
  and sums to 1."""
  cfg = synthetic.WorldConfig(num_items=24, num_genres=3, num_users=40, min_len=4, max_len=8,
                              exposure_noise=noise)
  truth = synthetic.world_truth(cfg, seed=5, min_history=3, max_history=10)
  raw = synthetic.build_world(cfg, seed=5, min_history=3, max_history=10)
  popularity, genre_items, states, sequences = synthetic.latent_states(cfg, seed=5)
  for split in ("train", "test"):
    users = sorted({w.user for w in raw.splits[split]})
    rows = [(u, i) for u in users for i in range(3, len(sequences[u]))]
    assert len(rows) == len(raw.splits[split]) == len(truth[split])
    for k in (0, len(rows) // 2, len(rows) - 1):
      u, i = rows[k]
      window = raw.splits[split][k]
      assert window.target == sequences[u][i] and window.user == u
      want = _written_out(cfg, popularity, genre_items, states[u][i])
      np.testing.assert_allclose(truth[split][k], want, rtol=1e-6, atol=1e-9)
      assert truth[split][k][list(window.history)].max() == 0
  for rows in truth.values():
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)


def test_the_generator_draws_its_items_from_the_recorded_probabilities():
  """Every item a world of 1,500 users draws, counted against the sum of its recorded
  probabilities over all steps: a chi-square test passes for the world's own probabilities and
  fails for the same world read without its exposure noise (the test can tell)."""
  cfg = synthetic.WorldConfig(num_users=1500, exposure_noise=0.3)
  popularity, genre_items, states, sequences = synthetic.latent_states(cfg, seed=1)
  observed = np.bincount([i for s in sequences for i in s], minlength=cfg.num_items)

  def chi2(world):
    expected = np.zeros(cfg.num_items)
    for user_states in states:
      for state in user_states:
        consumed = np.zeros(cfg.num_items, bool)
        consumed[list(state.consumed)] = True
        expected += synthetic.next_item_probs(world, popularity, genre_items, state.taste,
                                              state.genre, consumed)
    ok = expected > 5
    return float((((observed - expected) ** 2 / expected)[ok]).sum()), int(ok.sum()) - 1

  stat, df = chi2(cfg)
  assert stat < df + 5 * np.sqrt(2 * df), (stat, df)
  wrong, _ = chi2(synthetic.WorldConfig(**{**cfg.__dict__, "exposure_noise": 0.0}))
  assert wrong > df + 10 * np.sqrt(2 * df), (wrong, df)


def test_exposure_noise_zero_draws_the_world_drawn_before_the_knob():
  """No exposure noise draws no extra random number: the targets of a seed-0 world are those the
  generator drew before it had the knob (pinned from it), so the demo's data did not change;
  noise changes them."""
  raw = synthetic.build_world(synthetic.WorldConfig(num_users=50), seed=0)
  assert [w.target for w in raw.splits["train"][:12]] == [103, 42, 7, 199, 51, 74, 216, 0, 19,
                                                          48, 184, 234]
  assert [w.target for w in raw.splits["test"][:6]] == [112, 125, 50, 223, 7, 38]
  noisy = synthetic.build_world(synthetic.WorldConfig(num_users=50, exposure_noise=0.5), seed=0)
  assert raw.titles == noisy.titles and raw.splits["train"] != noisy.splits["train"]


def test_world_eps_and_the_bayes_ceiling_are_their_formulas():
  """eps_world = clip(lam * p_l / (p_w + p_l), eps_min, eps_max); the Bayes ceiling is the mean
  of max_c p_c / sum_c p_c, the hit rate of naming the most probable candidate (checked by
  drawing targets from those probabilities)."""
  smoothing = oracle_lib.SmoothingConfig(lam=0.8, eps_min=0.02, eps_max=0.45)
  p_w, p_l = np.array([0.3, 0.01, 0.2, 1e-9]), np.array([0.1, 0.2, 0.2, 0.0])
  want = np.clip(0.8 * p_l / (p_w + p_l), 0.02, 0.45)
  np.testing.assert_allclose(oracle_lib.world_eps(p_l, p_w, smoothing), want, rtol=1e-12)
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.full(20, 0.3), size=4000) * rng.uniform(0.1, 1, size=(4000, 1))
  ceiling = metrics.bayes_hit_ratio(probs)
  assert ceiling == pytest.approx(np.mean(probs.max(1) / probs.sum(1)), rel=1e-12)
  shown = probs / probs.sum(1, keepdims=True)
  targets = np.array([rng.choice(20, p=p) for p in shown])
  realized = np.mean(probs.argmax(1) == targets)
  assert abs(realized - ceiling) < 4 * np.sqrt(ceiling * (1 - ceiling) / len(probs))
  other = np.mean(rng.permutation(probs.T).T.argmax(1) == targets)  # any other rule does worse
  assert other < ceiling


def test_the_bayes_ceiling_bounds_the_demos_recommenders():
  """The demo's world (configs/demo.py): on its test split, the Bayes ceiling is above the
  popularity ranking's and the SASRec-like "history genre + popularity" heuristic's realized
  HitRatio@1, and the rule that knows the truth realizes it within sampling error."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  world = synthetic.WorldConfig(**c.data.world.to_dict())
  d = c.data
  raw = synthetic.build_world(world, d.seed, d.min_history, d.max_history)
  truth = synthetic.world_truth(world, d.seed, d.min_history, d.max_history)["test"]
  genre = np.asarray(raw.info["item_genre"])
  probs, hits = [], {"popularity": [], "genre": [], "truth": []}
  for k, w in enumerate(raw.splits["test"]):
    cands = np.asarray(sample_candidates(raw.num_items, w.history, w.target, d.num_candidates,
                                         d.seed, "test", k))
    p = truth[k][cands]
    probs.append(p)
    pop = raw.train_popularity[cands].astype(float)
    favourite = np.bincount(genre[list(w.history)], minlength=genre.max() + 1).argmax()
    picks = {"popularity": np.argmax(pop), "truth": np.argmax(p),
             "genre": np.argmax(pop * (1 + 100 * (genre[cands] == favourite)))}
    for name, pick in picks.items():
      hits[name].append(cands[pick] == w.target)
  ceiling = metrics.bayes_hit_ratio(np.array(probs))
  n = len(probs)
  noise = 4 * np.sqrt(ceiling * (1 - ceiling) / n)
  assert abs(np.mean(hits["truth"]) - ceiling) < noise
  assert np.mean(hits["popularity"]) < np.mean(hits["genre"]) < ceiling - noise
