"""Evaluation metrics (METHOD.md section 6) as pure functions over answers and candidates.

  valid      the answer equals exactly one candidate title after normalisation (case, surrounding
             quotes and whitespace)
  valid_substring  S-DPO's looser rule: exactly one candidate title occurs in the answer as a
             substring (compared after the same normalisation)
  hit        valid and equal to the target

Popularity (from the training split): an item's popularity percentile is
100 * (#items less popular + 0.5 * #items equally popular) / #items; the head is the 20% most
popular items (ties broken by item id). Key names are the ones `DIR/eval/<run>.json` uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_QUOTES = "\"'`\u2018\u2019\u201c\u201d"


def normalize(text: str) -> str:
  """casefold, strip whitespace and surrounding quotes (repeatedly)."""
  out = text.strip()
  while len(out) >= 1 and (out[0] in _QUOTES or out[-1] in _QUOTES):
    out = out.strip(_QUOTES).strip()
  return out.casefold()


def match_exact(answer: str, candidates: Sequence[str]) -> int | None:
  """Index of the one candidate equal to the answer after normalisation, else None."""
  a = normalize(answer)
  hits = [i for i, c in enumerate(candidates) if normalize(c) == a]
  return hits[0] if len(hits) == 1 else None


def match_substring(answer: str, candidates: Sequence[str]) -> int | None:
  """Index of the one candidate whose title occurs in the answer (S-DPO's rule), else None."""
  a = normalize(answer)
  hits = [i for i, c in enumerate(candidates) if normalize(c) and normalize(c) in a]
  return hits[0] if len(hits) == 1 else None


def popularity_percentiles(popularity: np.ndarray) -> np.ndarray:
  """Percentile (0..100) of every item's popularity within the catalogue."""
  pop = np.asarray(popularity)
  order = np.sort(pop)
  less = np.searchsorted(order, pop, side="left")
  equal = np.searchsorted(order, pop, side="right") - less
  return 100.0 * (less + 0.5 * equal) / len(pop)


def head_items(popularity: np.ndarray, fraction: float = 0.2) -> np.ndarray:
  """Boolean [I]: the ceil(fraction * I) most popular items (ties by lower id)."""
  pop = np.asarray(popularity)
  n = int(np.ceil(fraction * len(pop)))
  order = np.lexsort((np.arange(len(pop)), -pop))
  head = np.zeros(len(pop), bool)
  head[order[:n]] = True
  return head


def generation_metrics(answers: Sequence[str], candidate_titles: Sequence[Sequence[str]],
                       candidate_ids: Sequence[Sequence[int]], targets: Sequence[int],
                       popularity: np.ndarray) -> tuple[dict, list[dict]]:
  """Aggregate figures and per-example records (valid, hit, answer item) for generated answers."""
  pct, head = popularity_percentiles(popularity), head_items(popularity)
  records, recommended = [], []
  for answer, titles, ids, target in zip(answers, candidate_titles, candidate_ids, targets):
    exact = match_exact(answer, titles)
    item = None if exact is None else int(ids[exact])
    hit = item is not None and item == target
    records.append({"valid": exact is not None, "hit": hit,
                    "valid_substring": match_substring(answer, titles) is not None,
                    "answer_item": item})
    if item is not None:
      recommended.append(item)
  n = max(len(records), 1)
  hits = sum(r["hit"] for r in records)
  valid = sum(r["valid"] for r in records)
  targets = np.asarray(targets, np.int64)
  rec = np.asarray(recommended, np.int64)
  tgt_pct = pct[targets] if len(targets) else np.zeros(0)
  out = {
      "num_examples": len(records),
      "hit_ratio@1": hits / n,
      "valid_ratio": valid / n,
      "valid_ratio_substring": sum(r["valid_substring"] for r in records) / n,
      "hit_ratio@1_valid": hits / valid if valid else 0.0,
      "pop_mean_percentile": float(pct[rec].mean()) if len(rec) else 0.0,
      "head_ratio": float(head[rec].mean()) if len(rec) else 0.0,
      "coverage": len(set(rec.tolist())) / max(len(set(targets.tolist())), 1),
      "target_pop_mean_percentile": float(tgt_pct.mean()) if len(targets) else 0.0,
      "target_head_ratio": float(head[targets].mean()) if len(targets) else 0.0,
  }
  for name, lo, hi in (("low", 0, 100 / 3), ("mid", 100 / 3, 200 / 3), ("high", 200 / 3, 101)):
    sel = (tgt_pct >= lo) & (tgt_pct < hi)
    out[f"hit_ratio@1_tercile_{name}"] = (
        float(np.mean([records[i]["hit"] for i in np.flatnonzero(sel)])) if sel.any() else 0.0)
  return out, records


def target_ranks(scores_NxC: np.ndarray, target_pos_N: np.ndarray) -> np.ndarray:
  """The target's 0-based rank [N] among its candidates ranked by score, best first (ties count
  against the target: a candidate scored equal to the target ranks above it)."""
  scores = np.asarray(scores_NxC, np.float64)
  target = scores[np.arange(len(scores)), target_pos_N]
  return (scores >= target[:, None]).sum(axis=1) - 1


def ranking_metrics(rank_N: np.ndarray) -> dict:
  """HitRatio@{1,5,10} and NDCG@{5,10} of targets whose 0-based ranks among their candidates
  are `rank_N` (`target_ranks`)."""
  rank = np.asarray(rank_N)
  out = {f"rank_hit_ratio@{k}": float(np.mean(rank < k)) for k in (1, 5, 10)}
  for k in (5, 10):
    out[f"rank_ndcg@{k}"] = float(np.mean(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)))
  return out


def bayes_hit_ratio(true_probs_NxC: np.ndarray) -> float:
  """The Bayes-optimal HitRatio@1 over examples whose candidates' true probabilities of being
  the next item are `true_probs_NxC` (given the user's latent state): a recommender that knew
  them would name the most probable candidate and hit with probability max_c p_c / sum_c p_c
  (the other candidates are drawn uniformly, so the target's posterior among the shown ones is
  proportional to p). The mean is the expected hit rate no recommender can pass."""
  p = np.asarray(true_probs_NxC, np.float64)
  return float(np.mean(p.max(axis=1) / p.sum(axis=1))) if len(p) else 0.0


# ------------------------------------------------------------------------------------------------
# Comparisons over seeds: the spread of a figure, and paired differences between two runs.

# Two-sided 95% Student t quantiles by degrees of freedom (1 .. 30); larger: the normal's.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def over_seeds(values: Sequence[float]) -> dict:
  """Mean, sample standard deviation and the 95% t-interval of the mean of a figure's value per
  seed (std and interval None for one seed)."""
  x = np.asarray(values, np.float64)
  mean = float(x.mean())
  if len(x) < 2:
    return {"mean": mean, "std": None, "ci95": None, "seeds": len(x)}
  std = float(x.std(ddof=1))
  t = _T95[len(x) - 2] if len(x) - 1 <= len(_T95) else 1.960
  half = t * std / np.sqrt(len(x))
  return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "seeds": len(x)}


def paired_difference(per_seed: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      draws: int = 2000, seed: int = 0) -> dict:
  """Mean over seeds of the per-example difference a - b of two runs on the same examples, with a
  95% interval from a bootstrap over users (`paired_ratio_difference` with every denominator 1).

  per_seed: (users [N], a [N], b [N]) for each seed, e.g. each example's hit under both runs.
  Returns {"mean", "ci95": [lo, hi], "users", "examples"}.
  """
  return paired_ratio_difference(
      [(u, a, np.ones(len(u)), b, np.ones(len(u))) for u, a, b in per_seed], draws, seed)


def paired_ratio_difference(per_seed: Sequence[tuple[np.ndarray, ...]], draws: int = 2000,
                            seed: int = 0) -> dict:
  """Mean over seeds of sum(num_a) / sum(den_a) - sum(num_b) / sum(den_b), two runs' ratios over
  the same examples (e.g. head_ratio: head answers over valid answers), with a 95% interval from
  a bootstrap over users: each draw resamples the users (with replacement, the same draw for
  every seed, so a user's examples move together) and recomputes both ratios (a ratio over no
  examples counts as 0).

  per_seed: (users [N], num_a [N], den_a [N], num_b [N], den_b [N]) for each seed.
  Returns {"mean", "ci95": [lo, hi], "users", "examples"}.
  """
  users = np.unique(np.concatenate([s[0] for s in per_seed]))
  index = {int(u): k for k, u in enumerate(users)}
  per_user, counts = [], []  # per seed: [4, U] num_a, den_a, num_b, den_b summed per user
  for u, *parts in per_seed:
    k = np.array([index[int(x)] for x in u], np.int64)
    per_user.append(np.stack([np.bincount(k, np.asarray(x, np.float64), minlength=len(users))
                              for x in parts]))
    counts.append(len(u))
  sums_Sx4xU = np.stack(per_user)

  def difference(totals_Sx4):  # [..., S, 4] -> [..., S]: ratio a - ratio b
    num, den = totals_Sx4[..., 0::2], totals_Sx4[..., 1::2]
    ratios = num / np.where(den > 0, den, 1.0)
    return ratios[..., 0] - ratios[..., 1]

  mean = float(np.mean(difference(sums_Sx4xU.sum(-1))))
  rng = np.random.default_rng(seed)
  weights_DxU = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users)), size=draws)
  per_draw_DxS = difference(np.einsum("du,sfu->dsf", weights_DxU, sums_Sx4xU))
  lo, hi = np.percentile(per_draw_DxS.mean(axis=1), [2.5, 97.5])
  return {"mean": mean, "ci95": [float(lo), float(hi)], "users": int(len(users)),
          "examples": int(sum(counts))}
