"""Rejected sampling (METHOD.md section 3): which responses a prompt's chosen one is preferred to.

Strategies, each a pure function of its inputs and a seeded per-example RNG:
  random      a uniform non-target candidate (the plain DPO / S-DPO baseline); k without
              replacement for multi-negative S-DPO.
  popularity  a non-target candidate drawn with probability proportional to popularity ** alpha
              (training interaction counts; uniform when every candidate has popularity 0).
  semantic    the catalogue title closest to the target (cosine of title embeddings) that is NOT a
              candidate: a plausible but invalid answer.
  self_hard   the SFT model's own mistake: its greedy answer when that is a valid non-target
              candidate, else the non-target candidate it scores highest (see `self_hard_choice`).

`STRATEGIES` is the table the negatives stage reads: per strategy its choice function over one
example and its `Evidence`, what evidence it needs, whether its rejected item is a candidate (then
the oracle gives the pair's eps; otherwise smoothing.semantic_eps), and whether the SFT model's
real hallucinations are paired too. A new strategy is one function and one row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses

import numpy as np

from rosepo_jax.data.candidates import example_rng

RANDOM_PURPOSE, POPULARITY_PURPOSE = 2, 3  # rng stream ids (the rest: data/candidates.py)
HALLUCINATION = "hallucination"  # the strategy name of pairs whose rejected is a real SFT answer


def random_rejected(candidates: Sequence[int], target: int, k: int, seed: int, split: str,
                    index: int) -> list[int]:
  """k distinct non-target candidates, uniformly, seeded by (seed, split, index)."""
  pool = [c for c in candidates if c != target]
  if k > len(pool):
    raise ValueError(f"cannot draw {k} rejected items from {len(pool)} non-target candidates")
  rng = example_rng(seed, split, index, RANDOM_PURPOSE)
  return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def popularity_weights(candidates: Sequence[int], target: int, popularity: np.ndarray,
                       alpha: float) -> tuple[list[int], np.ndarray]:
  """Non-target candidates and their sampling probabilities, proportional to pop ** alpha."""
  pool = [c for c in candidates if c != target]
  w = np.asarray(popularity, np.float64)[pool] ** alpha
  w = np.where(np.asarray(popularity)[pool] > 0, w, 0.0)
  if w.sum() <= 0:
    w = np.ones(len(pool))
  return pool, w / w.sum()


def popularity_rejected(candidates: Sequence[int], target: int, popularity: np.ndarray,
                        alpha: float, seed: int, split: str, index: int) -> int:
  pool, p = popularity_weights(candidates, target, popularity, alpha)
  return pool[int(example_rng(seed, split, index, POPULARITY_PURPOSE).choice(len(pool), p=p))]


def title_embeddings(token_ids: Sequence[Sequence[int]], embed_VxD: np.ndarray) -> np.ndarray:
  """Mean input embedding over each title's tokens, L2-normalised: [num_titles, D]."""
  out = np.stack([embed_VxD[np.asarray(ids)].mean(axis=0) for ids in token_ids])
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def semantic_rejected(candidates: Sequence[int], target: int, unit_embeddings: np.ndarray) -> int:
  """The non-candidate item most cosine-similar to the target (ties: the lowest id)."""
  sims = unit_embeddings @ unit_embeddings[target]
  sims[np.asarray(list(candidates))] = -np.inf
  if not np.isfinite(sims).any():
    raise ValueError("semantic negative: every item is a candidate")
  return int(np.argmax(sims))


def self_hard_choice(answer_item: int | None, candidates: Sequence[int], target: int,
                     candidate_logps: Sequence[float]) -> int:
  """The SFT model's mistake: its answer when a valid non-target candidate, else the
  non-target candidate with the highest reference log-likelihood."""
  if answer_item is not None and answer_item != target and answer_item in candidates:
    return answer_item
  best, best_logp = None, -np.inf
  for item, logp in zip(candidates, candidate_logps):
    if item != target and logp > best_logp:
      best, best_logp = item, logp
  return best


@dataclasses.dataclass(frozen=True)
class Evidence:
  """What the strategies may use for one training example."""
  seed: int
  popularity: np.ndarray  # [num_items] training interaction counts
  popularity_alpha: float
  unit_embeddings: np.ndarray | None = None  # [num_items, D], L2-normalised ("embeddings")
  answer_item: int | None = None  # the SFT model's greedy answer as a candidate id ("answers")
  candidate_logps: Sequence[float] | None = None  # pi_ref log-lik. per candidate ("candidate_logps")


@dataclasses.dataclass(frozen=True)
class Strategy:
  choose: Callable[..., int]  # (example, Evidence) -> rejected item id
  needs: frozenset[str] = frozenset()  # of "answers", "candidate_logps", "embeddings"
  in_candidates: bool = True  # False: an invalid answer, its eps is smoothing.semantic_eps
  hallucinations: bool = False  # also pair each real SFT hallucination ("hallucination" pairs)


def scored_by_oracle(strategy: str) -> bool:
  """Whether a pair of `strategy` gets the oracle's eps (its rejected item is a candidate), not a
  fixed one (smoothing.semantic_eps: a semantic negative or a real hallucination)."""
  return strategy in STRATEGIES and STRATEGIES[strategy].in_candidates


def _random(ex, ev: Evidence) -> int:
  return random_rejected(ex.candidates, ex.target, 1, ev.seed, "train", ex.index)[0]


def _popularity(ex, ev: Evidence) -> int:
  return popularity_rejected(ex.candidates, ex.target, ev.popularity, ev.popularity_alpha,
                             ev.seed, "train", ex.index)


def _semantic(ex, ev: Evidence) -> int:
  return semantic_rejected(ex.candidates, ex.target, ev.unit_embeddings)


def _self_hard(ex, ev: Evidence) -> int:
  logps = ev.candidate_logps if ev.candidate_logps is not None else np.zeros(len(ex.candidates))
  return self_hard_choice(ev.answer_item, ex.candidates, ex.target, logps)


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(_random),
    "self_hard": Strategy(_self_hard, needs=frozenset({"answers", "candidate_logps"})),
    "semantic": Strategy(_semantic, needs=frozenset({"answers", "embeddings"}),
                         in_candidates=False, hallucinations=True),
    "popularity": Strategy(_popularity),
}
