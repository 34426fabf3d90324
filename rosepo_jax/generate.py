"""Decoding with the KV cache (greedy, sampled, beam search), each one jitted function with a
`lax.while_loop`, and `greedy_answers`: batched greedy answers to tokenized prompts as text.

Greedy and sampled decoding can be restricted to a list of responses per prompt (a prefix tree
walked in the loop: at each step only the next tokens of the responses the output still matches
are allowed), so that the answer is always one of them, e.g. one of the prompt's candidates.

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

from rosepo_jax import multihost, progress, sharding
from rosepo_jax.data.codec import Codec
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


def _prefill(model, prompt_BxP, valid_BxP, extra_slots: int):
  """Runs the prompts through the model into a fresh cache of P + extra_slots slots.

  Returns (last-position logits [B, V], cache, key-validity [B, S], next positions [B]).
  """
  b, p = prompt_BxP.shape
  s = p + extra_slots
  cache = KVCache.init(model.cfg, b, s)
  key_valid_BxS = jnp.concatenate([valid_BxP, jnp.zeros((b, extra_slots), bool)], axis=1)
  prefill_mask_BxPxS = (jnp.arange(s)[None, None, :] <= jnp.arange(p)[None, :, None]) & \
      key_valid_BxS[:, None, :]
  positions_BxP = positions_from_mask(valid_BxP)
  h_BxPxD, cache = model.hidden_states(prompt_BxP, positions_BxP, prefill_mask_BxPxS, cache)
  logits_BxV = model.logits(h_BxPxD[:, -1:])[:, 0]  # the LM head at the last position only
  return logits_BxV, cache, key_valid_BxS, positions_BxP[:, -1] + 1


def _allowed(tok_BxC, alive_BxC, vocab_size: int):
  """[B, V] mask of the tokens that continue a response still alive (tok [B, C]: each
  response's token at this output position, -1 past its end; alive [B, C]: the output so far
  is its prefix)."""
  ok_BxC = alive_BxC & (tok_BxC >= 0)
  rows_Bx1 = jnp.arange(tok_BxC.shape[0])[:, None]
  counts_BxV = jnp.zeros((tok_BxC.shape[0], vocab_size), jnp.int32).at[
      rows_Bx1, jnp.maximum(tok_BxC, 0)].add(ok_BxC.astype(jnp.int32))
  return counts_BxV > 0


def _pick(logits_BxV, key, temperature: float, top_k: int, allowed_BxV=None):
  """argmax when temperature == 0, else a draw from softmax(logits / temperature) restricted
  to the top_k logits (all when top_k == 0); only `allowed_BxV` tokens when given."""
  if allowed_BxV is not None:
    logits_BxV = jnp.where(allowed_BxV, logits_BxV, -jnp.inf)
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def decode(graphdef, state, prompt_BxP, valid_BxP, eos_ids_E, pad_id, key, max_new_tokens: int,
           temperature: float, top_k: int, responses_BxCxN=None):
  """The whole decoding program (to jit): prefill into the KV cache, then one token per loop
  step until every row has hit EOS or max_new_tokens; returns the new tokens [B, N].

  With `responses_BxCxN` (each row's allowed responses, EOS-terminated, padded with -1) every
  step picks among the tokens that continue a response the output so far begins.
  """
  model = nnx.merge(graphdef, state)
  b, p = prompt_BxP.shape
  logits_BxV, cache, key_valid_BxS, next_pos_B = _prefill(model, prompt_BxP, valid_BxP,
                                                          max_new_tokens)
  v = logits_BxV.shape[-1]
  constrained = responses_BxCxN is not None
  alive_BxC = responses_BxCxN[:, :, 0] >= 0 if constrained else jnp.zeros((b, 0), bool)

  def pick(logits_BxV, i, alive_BxC):
    """The token at output position i, and the responses the output still begins."""
    key_i = jax.random.fold_in(key, i)
    if not constrained:
      return _pick(logits_BxV, key_i, temperature, top_k), alive_BxC
    at_i_BxC = jax.lax.dynamic_index_in_dim(responses_BxCxN, i, axis=2, keepdims=False)
    tok_B = _pick(logits_BxV, key_i, temperature, top_k, _allowed(at_i_BxC, alive_BxC, v))
    return tok_B, alive_BxC & (at_i_BxC == tok_B[:, None])

  first_B, alive_BxC = pick(logits_BxV, 0, alive_BxC)
  out_BxN = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first_B)
  done_B = jnp.isin(first_B, eos_ids_E)

  def cond(carry):
    i, _, _, done_B, _, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, cache, out_BxN, done_B, pos_B, key_valid_BxS, alive_BxC = carry
    key_valid_BxS = key_valid_BxS.at[:, p + i - 1].set(True)
    token_Bx1 = out_BxN[:, i - 1][:, None]
    logits_Bx1xV, cache = model(token_Bx1, pos_B[:, None], key_valid_BxS[:, None, :], cache)
    tok_B, alive_BxC = pick(logits_Bx1xV[:, 0].astype(jnp.float32), i, alive_BxC)
    tok_B = jnp.where(done_B, pad_id, tok_B)
    out_BxN = out_BxN.at[:, i].set(tok_B)
    done_B = done_B | jnp.isin(tok_B, eos_ids_E)
    return i + 1, cache, out_BxN, done_B, pos_B + 1, key_valid_BxS, alive_BxC

  carry = (jnp.int32(1), cache, out_BxN, done_B, next_pos_B, key_valid_BxS, alive_BxC)
  out_BxN = jax.lax.while_loop(cond, body, carry)[2]
  return out_BxN


_decode = jax.jit(decode, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))


def _check_prompts(cfg, valid_BxP, max_new_tokens: int, what: str) -> np.ndarray:
  """Left-padded prompts whose longest, with `max_new_tokens` more, fits the model's positions."""
  valid_BxP = np.asarray(valid_BxP, bool)
  if not valid_BxP[:, -1].all():
    raise ValueError(f"{what}: prompts must be left-padded (last column all valid)")
  if max_new_tokens < 1:
    raise ValueError(f"{what}: max_new_tokens={max_new_tokens} must be >= 1")
  longest = int(valid_BxP.sum(axis=1).max())
  if longest + max_new_tokens > cfg.max_position_embeddings:
    raise ValueError(f"{what}: a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} "
                     f"exceeds the model's max_position_embeddings={cfg.max_position_embeddings}")
  return valid_BxP


def _special_ids(cfg, eos_ids, pad_id) -> tuple[tuple[int, ...], int]:
  eos = tuple(cfg.eos_token_ids if eos_ids is None else eos_ids) or (-1,)
  pad = (cfg.pad_token_id if cfg.pad_token_id is not None else 0) if pad_id is None else pad_id
  return eos, pad


def response_array(responses: Sequence[Sequence[Sequence[int]]], length: int,
                   count: int = 0) -> np.ndarray:
  """Each prompt's allowed responses as [B, C, length] ids, -1 past a response's end and for
  the rows with fewer than C = max(count, most responses of a prompt) responses."""
  count = max([count] + [len(r) for r in responses])
  out = np.full((len(responses), count, length), -1, np.int32)
  for b, row in enumerate(responses):
    for c, ids in enumerate(row):
      if len(ids) > length:
        raise ValueError(f"a response of {len(ids)} tokens (prompt {b}, response {c}) does not "
                         f"fit max_new_tokens={length}")
      out[b, c, :len(ids)] = ids
  return out


def _check_responses(responses_BxCxL, batch: int, max_new_tokens: int, eos, vocab_size: int,
                     what: str) -> np.ndarray:
  """Allowed responses [B, C, max_new_tokens] (padded with -1), each ending in an EOS id."""
  r = np.asarray(responses_BxCxL, np.int32)
  if r.ndim != 3 or r.shape[0] != batch:
    raise ValueError(f"{what}: responses must be [B={batch}, C, L], got shape {r.shape}")
  if r.shape[2] > max_new_tokens:
    raise ValueError(f"{what}: responses of {r.shape[2]} tokens do not fit max_new_tokens="
                     f"{max_new_tokens}")
  r = np.pad(r, ((0, 0), (0, 0), (0, max_new_tokens - r.shape[2])), constant_values=-1)
  lengths_BxC = (r >= 0).sum(axis=2)
  if np.any((r[:, :, 1:] >= 0) & (r[:, :, :-1] < 0)):
    raise ValueError(f"{what}: a response has a gap (-1 before a token)")
  if not (lengths_BxC > 0).any(axis=1).all():
    raise ValueError(f"{what}: every prompt needs at least one allowed response")
  last_BxC = np.take_along_axis(r, np.maximum(lengths_BxC - 1, 0)[..., None], axis=2)[..., 0]
  if not np.isin(last_BxC[lengths_BxC > 0], eos).all():
    raise ValueError(f"{what}: every allowed response must end with an EOS id {tuple(eos)}")
  if r.max() >= vocab_size:
    raise ValueError(f"{what}: a response token {r.max()} is outside the vocabulary "
                     f"({vocab_size})")
  return r


def generate(model: Decoder, prompt_BxP, valid_BxP, max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, seed: int = 0,
             eos_ids: Sequence[int] | None = None, pad_id: int | None = None,
             responses=None) -> np.ndarray:
  """Continuation [B, max_new_tokens] of left-padded prompts, greedy or sampled.

  temperature 0 is greedy (argmax); otherwise tokens are drawn from softmax(logits/temperature)
  over the `top_k` best logits (all when 0), with the stream of draws fixed by `seed`. A row
  stops after its first EOS (kept in the output); later slots hold `pad_id`. Defaults:
  ``eos_ids = cfg.eos_token_ids``, ``pad_id = cfg.pad_token_id`` (or 0).

  `responses` [B, C, L] (L <= max_new_tokens; ids padded with -1, each response ending in an
  EOS id, e.g. `response_array` of the candidates' titles) restricts every row to its C
  responses: each step picks among the next tokens of the responses the output still begins,
  so the output is one of them.
  """
  valid_BxP = _check_prompts(model.cfg, valid_BxP, max_new_tokens, "generate")
  if temperature < 0 or top_k < 0:
    raise ValueError(f"generate: temperature={temperature} and top_k={top_k} must be >= 0")
  eos, pad = _special_ids(model.cfg, eos_ids, pad_id)
  if responses is not None:
    responses = _check_responses(responses, len(valid_BxP), max_new_tokens, eos,
                                 model.cfg.vocab_size, "generate")
  graphdef, state = nnx.split(model)
  mesh = sharding.mesh_of(state)
  prompt_BxP, valid_BxP, responses = sharding.shared_batch(
      (np.asarray(prompt_BxP, np.int32), valid_BxP, responses), mesh)
  with sharding.use_mesh(mesh):
    out = _decode(graphdef, state, prompt_BxP, valid_BxP, np.asarray(eos, np.int32),
                  np.int32(pad), jax.random.key(seed), max_new_tokens, float(temperature),
                  int(top_k), responses)
  return multihost.to_host(out)


def greedy_generate(model: Decoder, prompt_BxP, valid_BxP, max_new_tokens: int,
                    eos_ids: Sequence[int] | None = None, pad_id: int | None = None,
                    responses=None) -> np.ndarray:
  """Greedy continuation [B, max_new_tokens] (`generate` at temperature 0), restricted to
  `responses` [B, C, L] when given."""
  return generate(model, prompt_BxP, valid_BxP, max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                  responses=responses)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "num_beams"))
def _beam(graphdef, state, prompt_BxP, valid_BxP, eos_ids_E, pad_id, length_penalty,
          max_new_tokens, num_beams):
  model = nnx.merge(graphdef, state)
  b, p = prompt_BxP.shape
  k, n = num_beams, max_new_tokens
  logits_BxV, cache, key_valid_BxS, next_pos_B = _prefill(model, prompt_BxP, valid_BxP, n)
  v = logits_BxV.shape[-1]
  # Beams are rows b * K + j; the prompt's cache is shared by copying it K times.
  expand = lambda x: jnp.repeat(x, k, axis=0)  # pylint: disable=unnecessary-lambda-assignment
  cache = cache.replace(k=tuple(map(expand, cache.k)), v=tuple(map(expand, cache.v)))
  key_valid_RxS, pos_R = expand(key_valid_BxS), expand(next_pos_B)
  logp_RxV = expand(jax.nn.log_softmax(logits_BxV, axis=-1))
  # Only beam 0 is alive at the start, so the first expansion has no duplicates.
  score_BxK = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, -jnp.inf) * jnp.ones((b, 1))
  out_BxKxN = jnp.full((b, k, n), pad_id, jnp.int32)
  done_BxK = jnp.zeros((b, k), bool)
  length_BxK = jnp.zeros((b, k), jnp.int32)

  def expand_step(i, logp_RxV, score_BxK, done_BxK, out_BxKxN, length_BxK):
    """Picks the K best (beam, token) continuations; finished beams only continue with pad at
    no cost. Returns the new beams and the source beam of each."""
    logp_BxKxV = logp_RxV.reshape(b, k, v)
    pad_only_V = jnp.where(jnp.arange(v) == pad_id, 0.0, -jnp.inf)
    logp_BxKxV = jnp.where(done_BxK[..., None], pad_only_V, logp_BxKxV)
    total_BxKV = (score_BxK[..., None] + logp_BxKxV).reshape(b, k * v)
    score_BxK, flat_BxK = jax.lax.top_k(total_BxKV, k)
    src_BxK, tok_BxK = flat_BxK // v, (flat_BxK % v).astype(jnp.int32)
    gather = lambda x: jnp.take_along_axis(x, src_BxK, axis=1)  # pylint: disable=unnecessary-lambda-assignment
    was_done_BxK = gather(done_BxK)
    out_BxKxN = jnp.take_along_axis(out_BxKxN, src_BxK[..., None], axis=1)
    out_BxKxN = out_BxKxN.at[:, :, i].set(tok_BxK)
    length_BxK = gather(length_BxK) + (~was_done_BxK).astype(jnp.int32)
    done_BxK = was_done_BxK | jnp.isin(tok_BxK, eos_ids_E)
    return score_BxK, done_BxK, out_BxKxN, length_BxK, src_BxK, tok_BxK

  score_BxK, done_BxK, out_BxKxN, length_BxK, _, tok_BxK = expand_step(
      0, logp_RxV, score_BxK, done_BxK, out_BxKxN, length_BxK)

  def cond(carry):
    i, done_BxK = carry[0], carry[3]
    return (i < n) & ~jnp.all(done_BxK)

  def body(carry):
    i, cache, score_BxK, done_BxK, out_BxKxN, length_BxK, tok_BxK, pos_R, key_valid_RxS = carry
    key_valid_RxS = key_valid_RxS.at[:, p + i - 1].set(True)
    logits_Rx1xV, cache = model(tok_BxK.reshape(b * k, 1), pos_R[:, None],
                                key_valid_RxS[:, None, :], cache)
    logp_RxV = jax.nn.log_softmax(logits_Rx1xV[:, 0].astype(jnp.float32), axis=-1)
    score_BxK, done_BxK, out_BxKxN, length_BxK, src_BxK, tok_BxK = expand_step(
        i, logp_RxV, score_BxK, done_BxK, out_BxKxN, length_BxK)
    rows_R = (jnp.arange(b)[:, None] * k + src_BxK).reshape(-1)
    cache = cache.replace(k=tuple(x[rows_R] for x in cache.k),
                          v=tuple(x[rows_R] for x in cache.v))
    return (i + 1, cache, score_BxK, done_BxK, out_BxKxN, length_BxK, tok_BxK, pos_R + 1,
            key_valid_RxS[rows_R])

  carry = (jnp.int32(1), cache, score_BxK, done_BxK, out_BxKxN, length_BxK, tok_BxK, pos_R,
           key_valid_RxS)
  carry = jax.lax.while_loop(cond, body, carry)
  score_BxK, out_BxKxN, length_BxK = carry[2], carry[4], carry[5]
  final_BxK = score_BxK / jnp.maximum(length_BxK, 1).astype(jnp.float32) ** length_penalty
  best_B = jnp.argmax(final_BxK, axis=1)
  best_BxN = jnp.take_along_axis(out_BxKxN, best_B[:, None, None], axis=1)[:, 0]
  return best_BxN, jnp.take_along_axis(score_BxK, best_B[:, None], axis=1)[:, 0]


def beam_search(model: Decoder, prompt_BxP, valid_BxP, max_new_tokens: int, num_beams: int,
                length_penalty: float = 1.0, eos_ids: Sequence[int] | None = None,
                pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Beam search: (best continuation [B, max_new_tokens], its summed log-prob [B]).

  Keeps the `num_beams` highest summed log-prob continuations per prompt; a beam that emits EOS
  is finished and keeps its score (it continues only with pad at no cost). The answer is the
  beam with the highest score / length ** length_penalty (length counts tokens up to and
  including EOS). The cache of the prompt is computed once and copied to the beams.
  """
  valid_BxP = _check_prompts(model.cfg, valid_BxP, max_new_tokens, "beam_search")
  if num_beams < 1:
    raise ValueError(f"beam_search: num_beams={num_beams} must be >= 1")
  eos, pad = _special_ids(model.cfg, eos_ids, pad_id)
  graphdef, state = nnx.split(model)
  mesh = sharding.mesh_of(state)
  prompt_BxP, valid_BxP = sharding.shared_batch(
      (np.asarray(prompt_BxP, np.int32), valid_BxP), mesh)
  with sharding.use_mesh(mesh):
    out, score = _beam(graphdef, state, prompt_BxP, valid_BxP, np.asarray(eos, np.int32),
                       np.int32(pad), np.float32(length_penalty), max_new_tokens, num_beams)
  return multihost.to_host(out), multihost.to_host(score)


def trim_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
  """Tokens up to (not including) the first EOS."""
  out = []
  for t in tokens:
    if t in eos_ids:
      break
    out.append(int(t))
  return out


def greedy_answer_ids(model: Decoder, prompt_ids: Sequence[Sequence[int]], pad_id: int,
                      batch_size: int, max_new_tokens: int, desc: str = "decoding",
                      responses: Sequence[Sequence[Sequence[int]]] | None = None
                      ) -> list[list[int]]:
  """The greedy answer of `model` to each prompt: its generated ids up to EOS (excluded); with
  `responses` (per prompt, its allowed responses' ids, each ending in EOS) one of them.

  Prompts are left-padded to a multiple of 32 tokens and chunks are filled up to `batch_size`
  (repeating the last prompt), so few shapes are ever compiled. Shows progress as `desc`.
  """
  answers = []
  eos = model.cfg.eos_token_ids
  count = max((len(r) for r in responses), default=0) if responses is not None else 0
  bar = progress.bar(len(prompt_ids), desc, "prompt")
  for start in range(0, len(prompt_ids), batch_size):
    chunk = list(prompt_ids[start:start + batch_size])
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)
    length = -(-max(len(p) for p in chunk) // 32) * 32
    tokens, valid = left_pad(chunk, pad_id, length)
    allowed = None
    if responses is not None:
      rows = list(responses[start:start + real])
      allowed = response_array(rows + [rows[-1]] * (batch_size - real), max_new_tokens, count)
    out = greedy_generate(model, tokens, valid, max_new_tokens, responses=allowed)
    answers += [trim_at_eos(row.tolist(), eos) for row in out[:real]]
    bar.update(real)
  bar.close()
  return answers


def greedy_answers(model: Decoder, codec: Codec, prompt_ids: Sequence[Sequence[int]],
                   batch_size: int, max_new_tokens: int, desc: str = "decoding",
                   responses: Sequence[Sequence[Sequence[int]]] | None = None) -> list[str]:
  """Greedy answers (`greedy_answer_ids`, decoded by `codec`, stripped) of `model`."""
  return [codec.decode(ids).strip() for ids in greedy_answer_ids(
      model, prompt_ids, codec.pad_token_id, batch_size, max_new_tokens, desc, responses)]
