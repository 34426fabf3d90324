"""Chunked response log-probs vs the naive full-vocabulary, one-sequence-per-response computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close, naive_response_logp
from rosepo_jax import model as M
from rosepo_jax import scoring
from rosepo_jax.data import batching as B


@pytest.mark.parametrize("chunk", [7, 64, 256, 1000])
def test_chunked_logps_equal_full_log_softmax(chunk):
  rs = np.random.RandomState(0)
  h = jnp.asarray(rs.randn(10, 16), jnp.float32)
  w = jnp.asarray(rs.randn(16, 256), jnp.float32)
  targets = jnp.asarray(rs.randint(0, 256, 10))
  want = jax.nn.log_softmax(h @ w, axis=-1)[jnp.arange(10), targets]
  assert_close(scoring.chunked_token_logps(h, w, targets, chunk), want, rtol=1e-6)
  g = jax.grad(lambda h: scoring.chunked_token_logps(h, w, targets, chunk).sum())(h)
  g_want = jax.grad(lambda h: jax.nn.log_softmax(h @ w, -1)[jnp.arange(10), targets].sum())(h)
  assert_close(g, g_want, rtol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2"])
def test_prefix_shared_response_logps_equal_naive(preset):
  model = M.init_model(M.get_config(preset), seed=4)
  rs = np.random.RandomState(1)
  rows = []
  for _ in range(3):
    prompt = tuple(rs.randint(3, 256, rs.randint(4, 12)).tolist())
    rows.append(B.EncodedRow(prompt, tuple(tuple(rs.randint(3, 256, rs.randint(1, 5)).tolist()) + (2,)
                                           for _ in range(4))))
  batch = {k: jnp.asarray(v) for k, v in
           B.make_batch(rows + [None], B.BatchShape(seq_multiple=16), 4).items()}
  got, counts = scoring.response_logps(model, batch, num_responses=4, vocab_chunk=100)
  for i, row in enumerate(rows):
    for j, resp in enumerate(row.responses):
      want = naive_response_logp(model, row.prompt, resp)
      assert abs(float(got[i, j]) - want) <= 1e-5 * abs(want), (i, j, float(got[i, j]), want)
      assert int(counts[i, j]) == len(resp)
  assert np.all(np.asarray(got[3]) == 0)  # padding row
