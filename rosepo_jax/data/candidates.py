"""Deterministic candidate sets: the target plus uniformly drawn negatives, shuffled.

The draw for an example depends only on (dataset seed, split, example index), so every run,
stage and process sees the same candidates (METHOD.md section 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rosepo_jax.data.records import DataError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# rng stream ids of example_rng; the others: prompts.PROMPT_PURPOSE = 1 (templates),
# negatives.RANDOM_PURPOSE = 2, negatives.POPULARITY_PURPOSE = 3
CANDIDATES_PURPOSE = 0
CURRICULUM_PURPOSE = 4
SUBSET_PURPOSE = 5
HELD_OUT_PURPOSE = 6


def example_rng(seed: int, split: str, index: int, purpose: int = 0) -> np.random.Generator:
  """An RNG keyed by (seed, split, index, purpose): independent of order and process."""
  return np.random.default_rng([seed, SPLIT_CODES[split], index, purpose])


def subset_indices(num_examples: int, limit: int, seed: int, split: str) -> np.ndarray:
  """`limit` example indices of a split drawn uniformly without replacement, seeded by (seed,
  split), in increasing order; every index when `limit` is 0 or covers the split.

  Splits are stored user by user, so a prefix covers few users; a uniform draw covers them in
  proportion to their examples (config `max_prompts`, `max_examples`)."""
  if limit <= 0 or limit >= num_examples:
    return np.arange(num_examples)
  rng = np.random.default_rng([seed, SPLIT_CODES[split], SUBSET_PURPOSE])
  return np.sort(rng.choice(num_examples, size=limit, replace=False))


def held_out_users(users: Sequence[int], share: float, seed: int) -> set[int]:
  """A seeded draw of round(share * n) of the n distinct `users` (at least one, never all)."""
  distinct = sorted({int(u) for u in users})
  n = min(max(round(share * len(distinct)), 1), len(distinct) - 1)
  order = np.random.default_rng([seed, HELD_OUT_PURPOSE]).permutation(len(distinct))
  return {distinct[j] for j in order[:n]}


def sample_candidates(num_items: int, history: Sequence[int], target: int, num_candidates: int,
                      seed: int, split: str, index: int) -> list[int]:
  """`num_candidates` distinct ids: the target once and negatives drawn uniformly from the
  catalogue minus the shown history and the target, in a seeded random order."""
  excluded = set(history) | {target}
  need = num_candidates - 1
  if num_items - len(excluded) < need:
    raise DataError(
        f"{split} example {index}: config.data.num_candidates={num_candidates} needs a catalogue "
        f"of at least {need + len(excluded)} items: {num_candidates} candidates plus the "
        f"{len(excluded) - 1} other items of its history, which are never drawn as negatives; "
        f"the catalogue has {num_items}. Lower config.data.num_candidates or "
        "config.data.max_history")
  rng = example_rng(seed, split, index, CANDIDATES_PURPOSE)
  negatives: list[int] = []
  seen = set(excluded)
  while len(negatives) < need:  # rejection sampling: uniform over the allowed ids
    for item in rng.integers(0, num_items, size=2 * num_candidates).tolist():
      if item not in seen:
        seen.add(item)
        negatives.append(item)
        if len(negatives) == need:
          break
  items = negatives + [target]
  return [items[i] for i in rng.permutation(num_candidates)]


def curriculum_subset(candidates: Sequence, target, shown: int, seed: int, split: str,
                      index: int) -> list:
  """`shown` of an example's candidates for a shortened SFT prompt: the target and `shown` - 1 of
  the others, in the candidates' own (already shuffled) order.

  The others are taken in one seeded order per example, so a smaller subset is always part of a
  larger one (2 of 20 within 5 of 20).
  """
  if not 1 <= shown <= len(candidates):
    raise ValueError(f"cannot show {shown} of {len(candidates)} candidates of {split} example "
                     f"{index}")
  others = [i for i, c in enumerate(candidates) if c != target]
  if len(others) != len(candidates) - 1:
    raise ValueError(f"{split} example {index}: the target must be among its candidates once")
  order = example_rng(seed, split, index, CURRICULUM_PURPOSE).permutation(len(others))
  keep = {others[j] for j in order[:shown - 1].tolist()}
  return [c for i, c in enumerate(candidates) if c == target or i in keep]
