"""Token batches for SFT and preference training, one row layout for both.

A row is ``[prompt, response_0, ..., response_k, padding]``. SFT rows have one response (the
target); preference rows have the chosen response then k rejected ones. Segment ids: 0 padding,
1 prompt, j + 2 response j. Positions restart after the prompt for every response, and
`model.prefix_shared_mask` lets each response attend to the prompt and to itself only, so a
prompt shared by k + 1 responses is encoded once and every response sees exactly what it
would see alone.

"Scored tokens" say which logits score which response token: ``score_pos[r]`` is the position
whose logits predict ``score_tok[r]``, a token of response ``score_seg[r]`` (PAD_SCORE = -1:
padding; PROMPT_SCORE = -2: a token of the prompt itself, one of the row's `targets`, e.g. a
history title for SFT's history loss). The first token of every response is predicted from the
last prompt position. Only scored positions need the LM head, which is where the memory and time
of long prompts are saved.

Lengths are padded to buckets (multiples of ``seq_multiple`` / ``score_multiple``) to bound
recompilation. Nothing is truncated silently: a row longer than ``max_seq_len`` is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

PAD_SEGMENT, PROMPT_SEGMENT = 0, 1
PAD_SCORE, PROMPT_SCORE = -1, -2  # score_seg of padding and of a scored prompt token


@dataclasses.dataclass(frozen=True)
class EncodedRow:
  prompt: tuple[int, ...]
  responses: tuple[tuple[int, ...], ...]  # each ends with EOS
  # Prompt positions (>= 1) whose token is scored too, predicted from the position before.
  targets: tuple[int, ...] = ()

  @property
  def length(self) -> int:
    return len(self.prompt) + sum(len(r) for r in self.responses)

  @property
  def scored(self) -> int:
    return sum(len(r) for r in self.responses) + len(self.targets)


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class BatchShape:
  max_seq_len: int = 1024
  seq_multiple: int = 32
  score_multiple: int = 16

  def lengths(self, rows: Sequence[EncodedRow]) -> tuple[int, int]:
    """(T, R) buckets for a set of rows; an error if any row exceeds max_seq_len."""
    longest = max(r.length for r in rows)
    if longest > self.max_seq_len:
      raise ValueError(f"a row has {longest} tokens > max_seq_len={self.max_seq_len}; raise "
                       "config.data.max_seq_len (rows are never truncated)")
    t = min(_round_up(longest, self.seq_multiple), _round_up(self.max_seq_len, 1))
    return t, _round_up(max(r.scored for r in rows), self.score_multiple)


def pack(rows: Sequence[EncodedRow], seq_len: int, score_len: int, num_responses: int
         ) -> dict[str, np.ndarray]:
  """Packs rows into fixed-shape arrays.

  Returns tokens/segments/positions [B, T] int32, score_pos/score_tok/score_seg [B, R] int32
  and row_valid [B] bool (False for padding rows, whose segments are all 0).
  """
  b = len(rows)
  out = {
      "tokens": np.zeros((b, seq_len), np.int32),
      "segments": np.zeros((b, seq_len), np.int32),
      "positions": np.zeros((b, seq_len), np.int32),
      "score_pos": np.zeros((b, score_len), np.int32),
      "score_tok": np.zeros((b, score_len), np.int32),
      "score_seg": np.full((b, score_len), PAD_SCORE, np.int32),
      "row_valid": np.zeros((b,), bool),
  }
  for i, row in enumerate(rows):
    if row is None:
      continue
    if len(row.responses) != num_responses:
      raise ValueError(f"row {i} has {len(row.responses)} responses, expected {num_responses}")
    if row.length > seq_len or row.scored > score_len:
      raise ValueError(f"row {i} ({row.length} tokens, {row.scored} scored) exceeds the batch "
                       f"shape ({seq_len}, {score_len})")
    p = len(row.prompt)
    out["tokens"][i, :p] = row.prompt
    out["segments"][i, :p] = PROMPT_SEGMENT
    out["positions"][i, :p] = np.arange(p)
    out["row_valid"][i] = True
    start, r = p, 0
    for j, resp in enumerate(row.responses):
      n = len(resp)
      if not n:  # an absent response (fewer rejected than the batch's k): scores nothing
        continue
      out["tokens"][i, start:start + n] = resp
      out["segments"][i, start:start + n] = j + 2
      out["positions"][i, start:start + n] = np.arange(p, p + n)
      # token m of response j is predicted by the logits at the previous token of its segment
      out["score_pos"][i, r:r + n] = [p - 1] + list(range(start, start + n - 1))
      out["score_tok"][i, r:r + n] = resp
      out["score_seg"][i, r:r + n] = j
      start += n
      r += n
    if row.targets:
      if min(row.targets) < 1 or max(row.targets) >= p:
        raise ValueError(f"row {i}: targets {row.targets} must be prompt positions in [1, {p})")
      n = len(row.targets)
      out["score_pos"][i, r:r + n] = [t - 1 for t in row.targets]
      out["score_tok"][i, r:r + n] = [row.prompt[t] for t in row.targets]
      out["score_seg"][i, r:r + n] = PROMPT_SCORE
  return out


def make_batch(rows: Sequence[EncodedRow | None], shape: BatchShape, num_responses: int,
               bucket_rows: Sequence[EncodedRow] | None = None) -> dict[str, np.ndarray]:
  """Packs `rows` (None = padding row) at the bucket lengths of `bucket_rows` (default: rows).

  In a multi-process job, pass the whole global batch as `bucket_rows` and this process's rows
  as `rows`, so every process pads to the same shape.
  """
  real = [r for r in (bucket_rows or rows) if r is not None]
  seq_len, score_len = shape.lengths(real)
  return pack(rows, seq_len, score_len, num_responses)


@dataclasses.dataclass(frozen=True)
class StepSampler:
  """Deterministic example order: the stream of per-epoch permutations, cut into global batches.

  Batch `step` is a pure function of (seed, step), so resuming at a step reproduces the data
  order exactly. Process `process_index` of `process_count` takes its contiguous slice of each
  global batch.
  """
  num_examples: int
  global_batch: int
  seed: int
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.global_batch % self.process_count:
      raise ValueError(f"global batch {self.global_batch} is not divisible by "
                       f"{self.process_count} processes")
    if self.num_examples < 1:
      raise ValueError("StepSampler: no examples")

  def epoch_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

  def global_indices(self, step: int) -> np.ndarray:
    start = step * self.global_batch
    positions = np.arange(start, start + self.global_batch)
    epochs = positions // self.num_examples
    out = np.empty(self.global_batch, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self.epoch_order(int(epoch))[positions[sel] % self.num_examples]
    return out

  def local_indices(self, step: int) -> np.ndarray:
    per = self.global_batch // self.process_count
    return self.global_indices(step)[self.process_index * per:(self.process_index + 1) * per]

  def local_batch(self, rows: Sequence[EncodedRow], step: int, shape: BatchShape,
                  num_responses: int) -> tuple[np.ndarray, dict]:
    """(this process's row indices, its batch) of global batch `step` over `rows`, padded to the
    global batch's length buckets so every process builds the same shapes."""
    local = self.local_indices(step)
    return local, make_batch([rows[i] for i in local], shape, num_responses,
                             bucket_rows=[rows[i] for i in self.global_indices(step)])


def eval_batches(num_examples: int, batch_size: int):
  """Sequential index chunks for evaluation; the last chunk is padded with -1 (padding rows)."""
  for start in range(0, num_examples, batch_size):
    idx = np.arange(start, start + batch_size)
    yield np.where(idx < num_examples, idx, -1)
