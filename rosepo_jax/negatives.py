"""Rejected sampling (METHOD.md section 3): which responses a prompt's chosen one is preferred to.

Implemented so far: `random` (a uniform non-target candidate; the plain DPO / S-DPO baseline),
k per prompt without replacement, seeded per example. The self_hard, semantic and popularity
strategies arrive with the RosePO core (issue 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rosepo_jax.data.candidates import example_rng

RANDOM_PURPOSE = 2  # rng stream id (0: candidates, 1: prompt templates)


def random_rejected(candidates: Sequence[int], target: int, k: int, seed: int, split: str,
                    index: int) -> list[int]:
  """k distinct non-target candidates, uniformly, seeded by (seed, split, index)."""
  pool = [c for c in candidates if c != target]
  if k > len(pool):
    raise ValueError(f"cannot draw {k} rejected items from {len(pool)} non-target candidates")
  rng = example_rng(seed, split, index, RANDOM_PURPOSE)
  return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
