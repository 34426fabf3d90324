"""Response log-probabilities over prefix-shared rows, with the LM head in vocabulary chunks.

A batch from `data.batching` holds rows ``[prompt, response_0..response_k]`` and scored tokens.
One forward encodes each prompt once; only the scored positions go through the LM head, and the
log-softmax runs over the vocabulary in chunks (a running logsumexp), so memory is
O(B x R x chunk) instead of O(B x T x V). All log-probs are fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rosepo_jax import multihost, progress, sharding
from rosepo_jax.data import batching
from rosepo_jax.data.batching import EncodedRow
from rosepo_jax.data.codec import Codec
from rosepo_jax.model import Decoder, prefix_shared_mask


def chunked_token_logps(h_NxD: jax.Array, w_DxV: jax.Array, targets_N: jax.Array,
                        chunk: int) -> jax.Array:
  """log softmax(h @ w)[target] for each row, in fp32, over vocabulary chunks of `chunk`.

  Each chunk's logits are recomputed in the backward pass (jax.checkpoint), never stored.
  """
  n, v = h_NxD.shape[0], w_DxV.shape[1]
  chunk = min(chunk, v)
  num_chunks = -(-v // chunk)
  pad = num_chunks * chunk - v
  w_CxDxc = jnp.pad(w_DxV, ((0, 0), (0, pad))).reshape(w_DxV.shape[0], num_chunks, chunk)
  w_CxDxc = w_CxDxc.transpose(1, 0, 2)

  @jax.checkpoint
  def body(carry, inputs):
    running_max_N, running_sum_N, target_logit_N = carry
    w_Dxc, c = inputs
    logits_Nxc = jnp.dot(h_NxD, w_Dxc.astype(h_NxD.dtype), preferred_element_type=jnp.float32)
    ids_c = c * chunk + jnp.arange(chunk)
    logits_Nxc = jnp.where(ids_c[None] < v, logits_Nxc, -jnp.inf)
    new_max_N = jnp.maximum(running_max_N, logits_Nxc.max(axis=1))
    running_sum_N = (running_sum_N * jnp.exp(running_max_N - new_max_N)
                     + jnp.exp(logits_Nxc - new_max_N[:, None]).sum(axis=1))
    hit_Nxc = ids_c[None] == targets_N[:, None]
    target_logit_N = target_logit_N + jnp.where(hit_Nxc, logits_Nxc, 0.0).sum(axis=1)
    return (new_max_N, running_sum_N, target_logit_N), None

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
          jnp.zeros((n,), jnp.float32))
  (m_N, s_N, t_N), _ = jax.lax.scan(body, init, (w_CxDxc, jnp.arange(num_chunks)))
  return t_N - (m_N + jnp.log(s_N))


def token_logps(model: Decoder, batch: dict, vocab_chunk: int = 8192) -> jax.Array:
  """log pi(token) [B, R] for every scored token of a prefix-shared batch, response and prompt
  targets alike (0 at padding)."""
  mask = prefix_shared_mask(batch["segments"])
  h_BxTxD, _ = model.hidden_states(batch["tokens"], batch["positions"], mask)
  b, r = batch["score_pos"].shape
  h_BxRxD = jnp.take_along_axis(h_BxTxD, batch["score_pos"][..., None], axis=1)
  logps = chunked_token_logps(h_BxRxD.reshape(b * r, -1), model.head_weight(),
                              batch["score_tok"].reshape(-1), vocab_chunk).reshape(b, r)
  return jnp.where(batch["score_seg"] != batching.PAD_SCORE, logps, 0.0)


def response_logps(model: Decoder, batch: dict, num_responses: int,
                   vocab_chunk: int = 8192) -> tuple[jax.Array, jax.Array]:
  """(summed log pi per response [B, K+1], token counts [B, K+1]); response 0 is the chosen."""
  logps_BxR = token_logps(model, batch, vocab_chunk)
  onehot_BxRxK = jax.nn.one_hot(batch["score_seg"], num_responses, dtype=jnp.float32)
  # An elementwise sum, not an einsum: exact fp32 on every backend (TPU einsums default to bf16).
  return (logps_BxR[:, :, None] * onehot_BxRxK).sum(axis=1), onehot_BxRxK.sum(axis=1)


def score_responses(model: Decoder, rows: Sequence[EncodedRow], batch_size: int = 16,
                    shape: batching.BatchShape | None = None,
                    vocab_chunk: int = 8192, desc: str = "scoring") -> np.ndarray:
  """Summed log pi(response | prompt) [N, C] for rows ``EncodedRow(prompt, C responses)``.

  Each prompt and all its C responses (e.g. the 20 candidate titles + EOS) go through ONE
  prefix-shared forward; rows are batched, padded to length buckets and jitted. Shows progress
  as `desc`. With a sharded model, batches are split over the mesh's batch axes (every process
  of a multi-process job calls this with the same rows and gets every row's scores).
  """
  if not rows:
    return np.zeros((0, 0), np.float32)
  num = len(rows[0].responses)
  shape = shape or batching.BatchShape()
  graphdef, state = nnx.split(model)
  fn = _score_fn(graphdef, num, vocab_chunk)
  mesh = sharding.mesh_of(state)
  out = np.zeros((len(rows), num), np.float32)
  bar = progress.bar(len(rows), desc, "prompt")
  for idx in batching.eval_batches(len(rows), batch_size):
    real = [int(i) for i in idx if i >= 0]
    batch = batching.make_batch([rows[i] if i >= 0 else None for i in idx], shape, num,
                                bucket_rows=[rows[i] for i in real])
    with sharding.use_mesh(mesh):
      logps = fn(state, sharding.shared_batch(batch, mesh))
    out[real] = multihost.to_host(logps)[:len(real)]
    bar.update(len(real))
  bar.close()
  return out


@functools.lru_cache(maxsize=16)
def _score_fn(graphdef, num_responses: int, vocab_chunk: int):
  return jax.jit(lambda state, batch: response_logps(
      nnx.merge(graphdef, state), batch, num_responses, vocab_chunk)[0])


def candidate_rows(codec: Codec, prompt_ids: Sequence[Sequence[int]],
                   candidates: Sequence[Sequence[int]], titles: Sequence[str]) -> list[EncodedRow]:
  """One row per prompt: its ids and every candidate's response ids (title + EOS), for scoring
  all candidates of a prompt in one forward; `candidates[n]` are prompt n's item ids."""
  title_ids: dict[int, tuple[int, ...]] = {}
  rows = []
  for prompt, items in zip(prompt_ids, candidates):
    for c in items:
      if c not in title_ids:
        title_ids[c] = codec.encode_response(titles[c])
    rows.append(EncodedRow(tuple(prompt), tuple(title_ids[c] for c in items)))
  return rows
