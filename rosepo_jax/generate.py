"""Batched greedy decoding with the KV cache, all in one jitted function.

Prompts are LEFT-padded [B, P] with a validity mask, so every row's last prompt token sits in the
last column and generated tokens share cache slots P, P+1, ... across the batch. Positions restart
per row (left padding gets no position), so a padded row decodes exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rosepo_jax.model import Decoder, KVCache, positions_from_mask


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to [B, length]; returns (tokens, valid mask)."""
  length = length or max(len(s) for s in sequences)
  if any(len(s) == 0 for s in sequences):
    raise ValueError("left_pad: empty prompt")
  if any(len(s) > length for s in sequences):
    raise ValueError(f"left_pad: a prompt is longer than length={length}")
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  valid = np.zeros((len(sequences), length), bool)
  for i, s in enumerate(sequences):
    tokens[i, length - len(s):] = s
    valid[i, length - len(s):] = True
  return tokens, valid


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy(graphdef, state, prompt_BxP, valid_BxP, eos_ids_E, pad_id, max_new_tokens):
  model = nnx.merge(graphdef, state)
  b, p = prompt_BxP.shape
  s = p + max_new_tokens
  cache = KVCache.init(model.cfg, b, s)
  key_valid_BxS = jnp.concatenate([valid_BxP, jnp.zeros((b, max_new_tokens), bool)], axis=1)
  slot_S = jnp.arange(s)
  prefill_mask_BxPxS = (slot_S[None, None, :] <= jnp.arange(p)[None, :, None]) & \
      key_valid_BxS[:, None, :]
  positions_BxP = positions_from_mask(valid_BxP)
  logits_BxPxV, cache = model(prompt_BxP, positions_BxP, prefill_mask_BxPxS, cache)
  first_B = jnp.argmax(logits_BxPxV[:, -1], axis=-1).astype(jnp.int32)
  out_BxN = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first_B)
  done_B = jnp.isin(first_B, eos_ids_E)
  next_pos_B = positions_BxP[:, -1] + 1

  def cond(carry):
    i, _, _, done_B, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, cache, out_BxN, done_B, pos_B, key_valid_BxS = carry
    key_valid_BxS = key_valid_BxS.at[:, p + i - 1].set(True)
    token_Bx1 = out_BxN[:, i - 1][:, None]
    logits_Bx1xV, cache = model(token_Bx1, pos_B[:, None], key_valid_BxS[:, None, :], cache)
    tok_B = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
    tok_B = jnp.where(done_B, pad_id, tok_B)
    out_BxN = out_BxN.at[:, i].set(tok_B)
    done_B = done_B | jnp.isin(tok_B, eos_ids_E)
    return i + 1, cache, out_BxN, done_B, pos_B + 1, key_valid_BxS

  carry = (jnp.int32(1), cache, out_BxN, done_B, next_pos_B, key_valid_BxS)
  _, _, out_BxN, _, _, _ = jax.lax.while_loop(cond, body, carry)
  return out_BxN


def greedy_generate(model: Decoder, prompt_BxP, valid_BxP, max_new_tokens: int,
                    eos_ids: Sequence[int] | None = None, pad_id: int | None = None
                    ) -> np.ndarray:
  """Greedy continuation [B, max_new_tokens] of left-padded prompts.

  A row stops after its first EOS (kept in the output); later slots hold `pad_id`. Defaults:
  ``eos_ids = cfg.eos_token_ids``, ``pad_id = cfg.pad_token_id`` (or 0).
  """
  cfg = model.cfg
  eos = tuple(cfg.eos_token_ids if eos_ids is None else eos_ids) or (-1,)
  pad = (cfg.pad_token_id if cfg.pad_token_id is not None else 0) if pad_id is None else pad_id
  valid_BxP = np.asarray(valid_BxP, bool)
  if not valid_BxP[:, -1].all():
    raise ValueError("greedy_generate: prompts must be left-padded (last column all valid)")
  if max_new_tokens < 1:
    raise ValueError(f"greedy_generate: max_new_tokens={max_new_tokens} must be >= 1")
  graphdef, state = nnx.split(model)
  out = _greedy(graphdef, state, jnp.asarray(prompt_BxP, jnp.int32), jnp.asarray(valid_BxP),
                jnp.asarray(eos, jnp.int32), jnp.int32(pad), max_new_tokens)
  return np.asarray(out)


def trim_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
  """Tokens up to (not including) the first EOS."""
  out = []
  for t in tokens:
    if t in eos_ids:
      break
    out.append(int(t))
  return out


def score_responses(model: Decoder, rows, batch_size: int = 16, shape=None,
                    vocab_chunk: int = 8192) -> np.ndarray:
  """Summed log pi(response | prompt) [N, C] for rows ``EncodedRow(prompt, C responses)``.

  Each prompt and all its C responses (e.g. the 20 candidate titles + EOS) go through ONE
  prefix-shared forward; rows are batched, padded to length buckets and jitted.
  """
  from rosepo_jax.data import batching  # pylint: disable=g-import-not-at-top

  if not rows:
    return np.zeros((0, 0), np.float32)
  num = len(rows[0].responses)
  shape = shape or batching.BatchShape()
  graphdef, state = nnx.split(model)
  fn = _score_fn(graphdef, num, vocab_chunk)
  out = np.zeros((len(rows), num), np.float32)
  for idx in batching.eval_batches(len(rows), batch_size):
    real = [int(i) for i in idx if i >= 0]
    batch = batching.make_batch([rows[i] if i >= 0 else None for i in idx], shape, num,
                                bucket_rows=[rows[i] for i in real])
    out[real] = np.asarray(fn(state, batch))[:len(real)]
  return out


@functools.lru_cache(maxsize=16)
def _score_fn(graphdef, num_responses: int, vocab_chunk: int):
  from rosepo_jax import scoring  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda state, batch: scoring.response_logps(
      nnx.merge(graphdef, state), batch, num_responses, vocab_chunk)[0])
