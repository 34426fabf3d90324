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
  m = K.ranking_metrics(scores, np.array([0, 0, 1]))
  # ranks: 0, 2, 1 (tie against the target)
  assert m["rank_hit_ratio@1"] == pytest.approx(1 / 3)
  assert m["rank_hit_ratio@5"] == 1.0
  assert m["rank_ndcg@5"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(3)) / 3)
