"""Rejected-sampling strategies: the invariants METHOD.md section 3 requires."""

import numpy as np
import pytest

from rosepo_jax import negatives as N


def test_random_is_k_distinct_non_targets_and_seeded():
  cands = list(range(20))
  for index in range(200):
    rej = N.random_rejected(cands, 7, 3, seed=0, split="train", index=index)
    assert len(set(rej)) == 3 and 7 not in rej and set(rej) <= set(cands)
    assert rej == N.random_rejected(cands, 7, 3, seed=0, split="train", index=index)
  with pytest.raises(ValueError, match="cannot draw 20"):
    N.random_rejected(cands, 7, 20, 0, "train", 0)


def test_popularity_sampling_matches_its_weights():
  """Chi-square goodness of fit over 20,000 seeded draws (fixed seed, so deterministic)."""
  cands = [0, 1, 2, 3, 4, 5]
  popularity = np.array([50, 10, 0, 30, 5, 100, 7])
  pool, p = N.popularity_weights(cands, 5, popularity, alpha=1.0)
  assert pool == [0, 1, 2, 3, 4] and p[2] == 0.0
  np.testing.assert_allclose(p, np.array([50, 10, 0, 30, 5]) / 95)
  draws = [N.popularity_rejected(cands, 5, popularity, 1.0, 0, "train", i) for i in range(20000)]
  counts = np.array([draws.count(c) for c in pool])
  expected = 20000 * p
  nonzero = expected > 0
  chi2 = (((counts - expected)[nonzero]) ** 2 / expected[nonzero]).sum()
  assert counts[2] == 0 and chi2 < 16.27, chi2  # 3 dof, p = 0.001
  _, p_sq = N.popularity_weights(cands, 5, popularity, alpha=2.0)
  np.testing.assert_allclose(p_sq, np.array([2500, 100, 0, 900, 25]) / 3525)
  _, uniform = N.popularity_weights([2, 6], 6, popularity, 1.0)  # only zero-popularity items
  np.testing.assert_allclose(uniform, [1.0])


def test_semantic_negative_is_the_closest_non_candidate():
  rs = np.random.RandomState(0)
  emb = N.title_embeddings([[i, i + 1] for i in range(30)], rs.randn(40, 8))
  cands = [3, 5, 8, 13]
  target = 5
  got = N.semantic_rejected(cands, target, emb.copy())
  assert got not in cands
  sims = emb @ emb[target]
  allowed = [i for i in range(30) if i not in cands]
  assert got == allowed[int(np.argmax(sims[allowed]))]
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-12)


def test_self_hard_prefers_the_models_valid_mistake():
  cands, target = [4, 9, 2, 7], 9
  logps = [-5.0, -1.0, -3.0, -2.0]
  assert N.self_hard_choice(2, cands, target, logps) == 2  # a valid wrong answer
  assert N.self_hard_choice(9, cands, target, logps) == 7  # answered the target: best non-target
  assert N.self_hard_choice(None, cands, target, logps) == 7  # hallucinated: best non-target
  assert N.self_hard_choice(11, cands, target, logps) == 7  # an item that is not a candidate
