"""Greedy decoding with the KV cache vs argmax decoding by repeated full forwards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import generate as G
from rosepo_jax import model as M


def _argmax_decode(model, prompt, n):
  """Reference: one full forward (no cache) per new token, over a fixed right-padded buffer.

  Causal attention makes position t independent of later (padding) tokens, so one jitted
  shape serves every step.
  """
  length = len(prompt) + n
  forward = jax.jit(lambda tokens: model(tokens, jnp.arange(length)[None],
                                         M.causal_mask(jnp.ones((1, length), bool)))[0])
  seq = np.zeros(length, np.int32)
  seq[:len(prompt)] = prompt
  for t in range(len(prompt), length):
    seq[t] = int(jnp.argmax(forward(jnp.asarray(seq[None]))[0, t - 1]))
  return seq[len(prompt):].tolist()


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2"])
def test_cached_greedy_equals_full_forward_argmax(preset):
  model = M.init_model(M.get_config(preset, eos_token_ids=(9999,)), seed=3)
  rs = np.random.RandomState(0)
  prompts = [rs.randint(3, 256, n).tolist() for n in (5, 11, 1, 8)]
  tokens, valid = G.left_pad(prompts, pad_id=0)
  out = G.greedy_generate(model, tokens, valid, max_new_tokens=10)
  for row, prompt in zip(out, prompts):
    assert row.tolist() == _argmax_decode(model, prompt, 10)


def test_eos_stops_row_and_pads_after():
  model = M.init_model(M.get_config("tiny", eos_token_ids=(9999,)), seed=3)
  prompt = np.random.RandomState(1).randint(3, 256, 6).tolist()
  free = _argmax_decode(model, prompt, 6)
  eos = free[2]  # declare the third generated token an EOS
  tokens, valid = G.left_pad([prompt], pad_id=0)
  out = G.greedy_generate(model, tokens, valid, 6, eos_ids=[eos], pad_id=-1)[0].tolist()
  first = free.index(eos)
  assert out[:first + 1] == free[:first + 1] and out[first + 1:] == [-1] * (5 - first)
  assert G.trim_at_eos(out, [eos]) == free[:first]


def test_bad_prompts_are_rejected():
  model = M.init_model(M.get_config("tiny"))
  with pytest.raises(ValueError, match="left-padded"):
    G.greedy_generate(model, np.ones((1, 3), np.int32), np.array([[True, True, False]]), 2)
  with pytest.raises(ValueError, match="empty prompt"):
    G.left_pad([[1, 2], []], pad_id=0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    G.greedy_generate(model, np.ones((1, 3), np.int32), np.ones((1, 3), bool), 0)


def test_candidate_scoring_equals_separate_forwards():
  from conftest import assert_close, naive_response_logp  # pylint: disable=g-import-not-at-top
  from rosepo_jax.data import batching  # pylint: disable=g-import-not-at-top
  model = M.init_model(M.get_config("tiny"), seed=9)
  rs = np.random.RandomState(2)
  rows = [batching.EncodedRow(tuple(rs.randint(3, 256, rs.randint(20, 40)).tolist()),
                              tuple(tuple(rs.randint(3, 256, rs.randint(1, 5)).tolist()) + (2,)
                                    for _ in range(20))) for _ in range(3)]
  scores = G.score_responses(model, rows, batch_size=2)
  assert scores.shape == (3, 20)
  for i, row in enumerate(rows):
    for j, resp in enumerate(row.responses):
      assert_close(scores[i, j], naive_response_logp(model, row.prompt, resp))
