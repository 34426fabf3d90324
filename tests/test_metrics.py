"""Metrics on hand-built cases, including the traps of S-DPO's substring rule."""

import numpy as np
import pytest

from rosepo_jax import metrics as K


def test_normalize_and_exact_match():
  cands = ["Air", "Air Supply", "The Cure", "Sigur Rós"]
  assert K.match_exact('  "the cure" ', cands) == 2
  assert K.match_exact("\u201cSigur R\u00f3s\u201d", cands) == 3
  assert K.match_exact("Air", cands) == 0
  assert K.match_exact("Air Supply and more", cands) is None
  assert K.match_exact("", cands) is None


def test_substring_rule_traps():
  cands = ["Air", "Air Supply", "Muse", "Blur"]
  assert K.match_substring("Air Supply", cands) is None  # contains "Air" and "Air Supply"
  assert K.match_substring("I pick Muse.", cands) == 2
  assert K.match_substring("Muse or Blur", cands) is None  # two titles
  assert K.match_substring("Airplane", cands) == 0  # the loose rule accepts this
  assert K.match_exact("Airplane", cands) is None  # the exact one does not


def test_popularity_percentiles_and_head():
  pop = np.array([0, 10, 10, 5, 100])
  # (#less + 0.5 * #equal) / 5: 0 -> 0.5/5, 10 -> (2 + 1)/5, 5 -> 1.5/5, 100 -> 4.5/5
  np.testing.assert_allclose(K.popularity_percentiles(pop), [10, 60, 60, 30, 90])
  assert K.head_items(pop).tolist() == [False, False, False, False, True]
  assert K.head_items(np.array([3, 3, 3, 3, 3, 3, 3, 3, 3, 3])).sum() == 2  # ties by id
  assert K.head_items(np.array([3, 3, 3, 3, 3, 3, 3, 3, 3, 3]))[:2].all()


def test_generation_metrics_hand_built():
  pop = np.array([100, 50, 10, 5, 1, 0])  # head (top 20% of 6 -> 2 items): 0, 1
  titles = [["A", "B", "C"], ["A", "D", "E"], ["B", "C", "F"], ["C", "D", "E"]]
  ids = [[0, 1, 2], [0, 3, 4], [1, 2, 5], [2, 3, 4]]
  targets = [0, 3, 5, 4]
  answers = ["a", "A", "nothing", "E"]
  out, rec = K.generation_metrics(answers, titles, ids, targets, pop)
  assert [r["valid"] for r in rec] == [True, True, False, True]
  assert [r["hit"] for r in rec] == [True, False, False, True]
  assert out["hit_ratio@1"] == 0.5 and out["valid_ratio"] == 0.75
  assert out["hit_ratio@1_valid"] == pytest.approx(2 / 3)
  pct = K.popularity_percentiles(pop)
  assert out["pop_mean_percentile"] == pytest.approx(np.mean(pct[[0, 0, 4]]))
  assert out["head_ratio"] == pytest.approx(2 / 3)
  assert out["coverage"] == pytest.approx(2 / 4)  # recommended {0, 4}; targets {0, 3, 5, 4}
  assert out["target_head_ratio"] == 0.25
  assert out["target_pop_mean_percentile"] == pytest.approx(np.mean(pct[targets]))


def test_ranking_metrics():
  scores = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.3], [0.5, 0.5, 0.1]])
  rank = K.target_ranks(scores, np.array([0, 0, 1]))
  np.testing.assert_array_equal(rank, [0, 2, 1])  # the tie counts against the target
  m = K.ranking_metrics(rank)
  assert m["rank_hit_ratio@1"] == pytest.approx(1 / 3)
  assert m["rank_hit_ratio@5"] == 1.0
  assert m["rank_ndcg@5"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(3)) / 3)


def test_over_seeds_is_the_t_interval_written_out():
  x = [0.31, 0.35, 0.34]
  f = K.over_seeds(x)
  mean, std = sum(x) / 3, (sum((v - sum(x) / 3) ** 2 for v in x) / 2) ** 0.5
  half = 4.303 * std / 3 ** 0.5  # t(0.975, 2 df)
  assert f["mean"] == pytest.approx(mean, rel=1e-12) and f["std"] == pytest.approx(std, rel=1e-12)
  assert f["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-12) and f["seeds"] == 3
  assert K.over_seeds([0.5]) == {"mean": 0.5, "std": None, "ci95": None, "seeds": 1}


def test_paired_difference_resamples_users_with_their_examples():
  """The point estimate is the mean over seeds of the mean per-example difference; the interval
  is the bootstrap over users written out as a loop (each draw: users with replacement, every
  example of a drawn user counted as often as the user is drawn, in every seed)."""
  rs = np.random.RandomState(0)
  users = rs.randint(0, 30, 200)
  per_seed = [(users, rs.rand(200) < 0.4, rs.rand(200) < 0.3) for _ in range(3)]
  got = K.paired_difference(per_seed, draws=300, seed=7)
  want_mean = np.mean([np.mean(a.astype(float) - b) for _, a, b in per_seed])
  assert got["mean"] == pytest.approx(want_mean, rel=1e-12)
  distinct = np.unique(users)
  rng = np.random.default_rng(7)
  draws = []
  for w in rng.multinomial(len(distinct), np.full(len(distinct), 1 / len(distinct)), size=300):
    times = dict(zip(distinct.tolist(), w.tolist()))
    seeds = []
    for u, a, b in per_seed:
      weight = np.array([times[x] for x in u], float)
      seeds.append((weight * (a.astype(float) - b)).sum() / max(weight.sum(), 1.0))
    draws.append(np.mean(seeds))
  assert got["ci95"] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])), rel=1e-10)
  assert got["ci95"][0] < got["mean"] < got["ci95"][1]
  assert got["users"] == len(distinct) and got["examples"] == 600
  same = K.paired_difference([(users, per_seed[0][1], per_seed[0][1])])
  assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_paired_ratio_difference_recomputes_both_ratios_per_draw():
  """head_ratio's form: each run's ratio of sums (head answers over valid answers) within a seed,
  the difference averaged over seeds; the bootstrap written out as a loop over users."""
  rs = np.random.RandomState(1)
  users = rs.randint(0, 25, 150)
  per_seed = []
  for _ in range(2):
    den_a, den_b = rs.rand(150) < 0.8, rs.rand(150) < 0.6
    per_seed.append((users, den_a & (rs.rand(150) < 0.5), den_a, den_b & (rs.rand(150) < 0.3),
                     den_b))
  got = K.paired_ratio_difference(per_seed, draws=200, seed=3)
  ratio = lambda n, d, w: (w * n).sum() / (w * d).sum()  # pylint: disable=unnecessary-lambda-assignment
  ones = np.ones(150)
  assert got["mean"] == pytest.approx(np.mean([ratio(na, da, ones) - ratio(nb, db, ones)
                                               for _, na, da, nb, db in per_seed]), rel=1e-12)
  distinct = np.unique(users)
  rng = np.random.default_rng(3)
  draws = []
  for w in rng.multinomial(len(distinct), np.full(len(distinct), 1 / len(distinct)), size=200):
    times = dict(zip(distinct.tolist(), w.tolist()))
    weight = np.array([times[x] for x in users], float)
    draws.append(np.mean([ratio(na, da, weight) - ratio(nb, db, weight)
                          for _, na, da, nb, db in per_seed]))
  assert got["ci95"] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])), rel=1e-10)
  assert got["users"] == len(distinct) and got["examples"] == 300
