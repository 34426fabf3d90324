"""Row lengths: the longest row every later stage will build, known right after the data stage.

The data stage records, per split and example, the token counts that bound every row built from
it (`example_lengths`); `longest_rows` turns them, for one configuration, into the longest row of
each kind (the layout of `data.batching`, a prompt followed by its responses):

  sft         prompt + target title + EOS (a curriculum's fewer shown candidates only shorten it)
  scoring     prompt + every candidate's title + EOS (eval ranking, self-hard negatives)
  preference  prompt + chosen + k rejected responses, each at most the longest non-target
              candidate, or, with semantic negatives, the longest catalogue title or an SFT answer
              of max_new_tokens + EOS
  decoding    prompt + max_new_tokens (eval and negatives)

Preference rows use an upper bound (the rejected items are drawn later); the others are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIELDS = ("prompt", "target", "candidates", "other_max")
WHAT = {"sft": "an SFT row (prompt and target title)",
        "scoring": "a candidate-scoring row (prompt and all candidate titles)",
        "preference": "a preference row (prompt, chosen and {k} rejected responses, at most)",
        "decoding": "decoding (prompt and {new} new tokens)"}


def example_lengths(prompt_ids: Sequence[Sequence[int]], target_N: Sequence[int],
                    candidates_NxC: Sequence[Sequence[int]], response_len_I: np.ndarray
                    ) -> dict[str, np.ndarray]:
  """Per example n of one split: prompt tokens, target response tokens, the sum of all candidate
  responses' tokens and the longest non-target candidate response (`response_len_I[i]`: tokens
  of item i's response, title + EOS). Each value is int64 [N]."""
  out = {f: np.zeros(len(prompt_ids), np.int64) for f in FIELDS}
  for n, (prompt, target, candidates) in enumerate(zip(prompt_ids, target_N, candidates_NxC)):
    lens = response_len_I[list(candidates)]
    others = lens[np.asarray(candidates) != target]
    out["prompt"][n], out["target"][n] = len(prompt), response_len_I[target]
    out["candidates"][n], out["other_max"][n] = lens.sum(), others.max(initial=0)
  return out


def longest_rows(lengths: dict[str, dict[str, np.ndarray]], num_rejected: int,
                 rejected_bound: int, new_tokens: int) -> dict[str, dict]:
  """The longest row of each kind over every split: {kind: {"tokens", "split", "index"}}.

  `lengths[split]` are `example_lengths`; `num_rejected` the most rejected responses of a
  configured preference method (0: none, no preference rows); `rejected_bound` a bound on a
  rejected response that need not be a candidate (0: every rejected item is a candidate);
  `new_tokens` the most tokens a decoding stage generates.
  """
  best: dict[str, dict] = {}
  for split, f in lengths.items():
    if not len(f["prompt"]):
      continue
    rows = {"sft": f["prompt"] + f["target"], "scoring": f["prompt"] + f["candidates"],
            "decoding": f["prompt"] + new_tokens}
    if num_rejected:
      rows["preference"] = (f["prompt"] + f["target"]
                            + num_rejected * np.maximum(f["other_max"], rejected_bound))
    for kind, tokens_N in rows.items():
      n = int(np.argmax(tokens_N))
      if kind not in best or tokens_N[n] > best[kind]["tokens"]:
        best[kind] = {"tokens": int(tokens_N[n]), "split": split, "index": n}
  return best


def describe(kind: str, num_rejected: int, new_tokens: int) -> str:
  return WHAT[kind].format(k=num_rejected, new=new_tokens)
