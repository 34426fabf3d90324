"""Candidate sampling: deterministic across runs and processes, valid by construction."""

import multiprocessing

import numpy as np
import pytest

from rosepo_jax.data.candidates import sample_candidates, subset_indices


def _draw(args):
  return sample_candidates(*args)


def test_target_once_no_history_no_duplicates():
  rs = np.random.RandomState(0)
  for index in range(500):
    history = rs.choice(300, size=rs.randint(3, 11), replace=False).tolist()
    target = int(rs.choice([i for i in range(300) if i not in history]))
    cands = sample_candidates(300, history, target, 20, seed=1, split="train", index=index)
    assert len(cands) == 20 == len(set(cands))
    assert cands.count(target) == 1 and not set(cands) & set(history)
    assert all(0 <= c < 300 for c in cands)


def test_deterministic_across_runs_and_processes():
  jobs = [(4606, [1, 2, 3], 7, 20, 0, "test", i) for i in range(50)]
  here = [_draw(j) for j in jobs]
  assert here == [_draw(j) for j in jobs]
  with multiprocessing.get_context("spawn").Pool(2) as pool:
    assert pool.map(_draw, jobs) == here
  other_seed = [sample_candidates(4606, [1, 2, 3], 7, 20, 1, "test", i) for i in range(50)]
  assert other_seed != here
  assert sample_candidates(4606, [1, 2, 3], 7, 20, 0, "val", 0) != here[0]  # splits differ


def test_negatives_are_uniform_and_target_position_is_shuffled():
  counts = np.zeros(30, int)
  positions = np.zeros(5, int)
  for index in range(6000):
    cands = sample_candidates(30, [0, 1], 2, 5, seed=3, split="train", index=index)
    counts[cands] += 1
    positions[cands.index(2)] += 1
  negatives = counts[3:]  # 27 allowed items, 4 negatives per draw: expected 6000 * 4 / 27 each
  expected = 6000 * 4 / 27
  chi2 = ((negatives - expected) ** 2 / expected).sum()
  assert chi2 < 55, chi2  # chi-square, 26 dof: p ~ 0.001 at 54
  assert counts[0] == counts[1] == 0 and counts[2] == 6000
  assert np.all(np.abs(positions - 1200) < 150), positions


def test_too_small_catalogue_is_an_error():
  """The minimum is num_candidates plus the history (never drawn as negatives), not 20."""
  with pytest.raises(ValueError, match=r"train example 0: config.data.num_candidates=20 needs a "
                     r"catalogue of at least 23 items: 20 candidates plus the 3 other items of "
                     r"its history.*the catalogue has 15"):
    sample_candidates(15, [0, 1, 2], 3, 20, 0, "train", 0)


def test_curriculum_subset_keeps_target_and_order_and_nests():
  from rosepo_jax.data.candidates import curriculum_subset
  for index in range(200):
    cands = sample_candidates(240, [1, 2, 3], 7, 20, seed=0, split="train", index=index)
    subsets = {k: curriculum_subset(cands, 7, k, 0, "train", index) for k in (1, 2, 5, 10, 20)}
    for k, sub in subsets.items():
      assert len(sub) == k and 7 in sub
      assert sub == [c for c in cands if c in sub]  # the candidates' own order
    assert subsets[1] == [7] and subsets[20] == cands
    assert set(subsets[2]) <= set(subsets[5]) <= set(subsets[10])
    assert subsets[5] == curriculum_subset(cands, 7, 5, 0, "train", index)  # deterministic
  firsts = {curriculum_subset(sample_candidates(240, [1], 7, 20, 0, "train", i), 7, 2, 0,
                              "train", i)[0] for i in range(50)}
  assert len(firsts) > 10  # the other candidate varies across examples


@pytest.mark.parametrize("shown", [0, 21])
def test_curriculum_subset_rejects_bad_sizes(shown):
  from rosepo_jax.data.candidates import curriculum_subset
  with pytest.raises(ValueError, match=f"cannot show {shown} of 20 candidates of train example 3"):
    curriculum_subset(list(range(20)), 4, shown, 0, "train", 3)
  with pytest.raises(ValueError, match="target must be among its candidates once"):
    curriculum_subset(list(range(20)), 99, 2, 0, "train", 3)


def test_subsets_are_seeded_draws_across_users():
  """A split stored user by user (100 users x 20 examples): a 200-example subset is a uniform
  draw, so it reaches most users with about 2 examples each (a prefix would reach 10), and it is
  the same for the same seed and split."""
  users = np.repeat(np.arange(100), 20)
  idx = subset_indices(len(users), 200, seed=0, split="test")
  assert len(idx) == len(set(idx.tolist())) == 200 and (np.diff(idx) > 0).all()
  per_user = np.bincount(users[idx], minlength=100)
  assert (per_user > 0).sum() >= 80 and per_user.max() <= 8
  assert np.array_equal(idx, subset_indices(len(users), 200, seed=0, split="test"))
  assert not np.array_equal(idx, subset_indices(len(users), 200, seed=1, split="test"))
  assert not np.array_equal(idx, subset_indices(len(users), 200, seed=0, split="train"))
  np.testing.assert_array_equal(subset_indices(50, 0, 0, "test"), np.arange(50))
  np.testing.assert_array_equal(subset_indices(50, 80, 0, "test"), np.arange(50))
