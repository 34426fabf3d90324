"""Greedy decoding with the KV cache vs argmax decoding by repeated full forwards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import generate as G
from rosepo_jax import model as M
from rosepo_jax import scoring


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


def test_candidate_scoring_equals_separate_forwards(capsys):
  from conftest import assert_close, naive_response_logp  # pylint: disable=g-import-not-at-top
  from rosepo_jax.data import batching  # pylint: disable=g-import-not-at-top
  model = M.init_model(M.get_config("tiny"), seed=9)
  rs = np.random.RandomState(2)
  rows = [batching.EncodedRow(tuple(rs.randint(3, 256, rs.randint(20, 40)).tolist()),
                              tuple(tuple(rs.randint(3, 256, rs.randint(1, 5)).tolist()) + (2,)
                                    for _ in range(20))) for _ in range(3)]
  scores = scoring.score_responses(model, rows, batch_size=2, desc="eval test: candidate scores")
  assert scores.shape == (3, 20)
  bar = capsys.readouterr().err.split("\r")[-1]  # the progress bar's last state: count and rate
  # The rate reads prompt/s, or s/prompt on a slow (loaded) machine.
  assert "eval test: candidate scores" in bar and "3/3" in bar, bar
  assert "prompt/s" in bar or "s/prompt" in bar, bar
  for i, row in enumerate(rows):
    for j, resp in enumerate(row.responses):
      assert_close(scores[i, j], naive_response_logp(model, row.prompt, resp))


def _log_softmax64(logits):
  x = np.asarray(logits, np.float64)
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def _reference_beam(model, prompt, n, num_beams, eos, pad, length_penalty):
  """Beam search written out over full forwards (no cache), float64 scores."""
  forward = jax.jit(lambda tokens: model(tokens, jnp.arange(tokens.shape[1])[None],
                                         M.causal_mask(jnp.ones(tokens.shape, bool)))[0])
  beams = [([], 0.0, False)]
  for _ in range(n):
    if all(done for _, _, done in beams):
      break
    expanded = []
    for tokens, score, done in beams:
      if done:
        expanded.append((tokens + [pad], score, True))
        continue
      logp = _log_softmax64(forward(jnp.asarray([prompt + tokens]))[0, -1])
      expanded += [(tokens + [t], score + logp[t], t in eos) for t in range(len(logp))]
    beams = sorted(expanded, key=lambda b: -b[1])[:num_beams]

  def length(tokens):
    return next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
  best = max(beams, key=lambda b: b[1] / length(b[0]) ** length_penalty)
  return best[0] + [pad] * (n - len(best[0])), best[1]


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_beam_search_equals_written_out_reference(length_penalty):
  model = M.init_model(M.get_config("tiny", eos_token_ids=(9999,)), seed=5)
  rs = np.random.RandomState(2)
  prompts = [rs.randint(3, 256, n).tolist() for n in (6, 3)]
  # Declare a token that greedy decoding emits early an EOS, so beams finish at different steps.
  eos = (_argmax_decode(model, prompts[0], 3)[1],)
  tokens, valid = G.left_pad(prompts, pad_id=0)
  out, score = G.beam_search(model, tokens, valid, 5, num_beams=3, eos_ids=eos, pad_id=0,
                             length_penalty=length_penalty)
  for row, s, prompt in zip(out, score, prompts):
    ref_tokens, ref_score = _reference_beam(model, prompt, 5, 3, eos, 0, length_penalty)
    assert row.tolist() == ref_tokens
    np.testing.assert_allclose(s, ref_score, rtol=1e-5)


def test_one_beam_is_greedy():
  model = M.init_model(M.get_config("tiny", eos_token_ids=(9999,)), seed=3)
  tokens, valid = G.left_pad([[5, 6, 7, 8], [9, 10]], pad_id=0)
  out, _ = G.beam_search(model, tokens, valid, 6, num_beams=1)
  np.testing.assert_array_equal(out, G.greedy_generate(model, tokens, valid, 6))


def test_sampling_top1_is_greedy_and_seeded():
  model = M.init_model(M.get_config("tiny", eos_token_ids=(9999,)), seed=3)
  tokens, valid = G.left_pad([[5, 6, 7, 8], [9, 10]], pad_id=0)
  greedy = G.greedy_generate(model, tokens, valid, 6)
  np.testing.assert_array_equal(
      G.generate(model, tokens, valid, 6, temperature=0.7, top_k=1, seed=4), greedy)
  a = G.generate(model, tokens, valid, 6, temperature=1.0, seed=1)
  np.testing.assert_array_equal(a, G.generate(model, tokens, valid, 6, temperature=1.0, seed=1))
  assert not np.array_equal(a, G.generate(model, tokens, valid, 6, temperature=1.0, seed=2))


def test_sampling_matches_tempered_top_k_distribution():
  """Frequencies of 6,000 first-token draws vs softmax(logits / T) over the top k (chi-square)."""
  # Scale the head up so the next-token distribution is far from uniform.
  model = M.init_model(M.get_config("tiny", eos_token_ids=(9999,)), seed=3)
  model.lm_head.kernel[...] = model.lm_head.kernel[...] * 40.0
  prompt = [5, 6, 7, 8]
  n, temperature, top_k = 6000, 0.8, 5
  tokens, valid = G.left_pad([prompt] * n, pad_id=0)
  draws = G.generate(model, tokens, valid, 1, temperature=temperature, top_k=top_k, seed=0)[:, 0]
  logits = np.asarray(model(jnp.asarray([prompt]), jnp.arange(4)[None],
                            M.causal_mask(jnp.ones((1, 4), bool)))[0][0, -1], np.float64)
  top = np.argsort(-logits)[:top_k]
  p = np.exp(_log_softmax64(logits[top] / temperature))
  assert set(np.unique(draws)) <= set(top.tolist())
  observed = np.array([(draws == t).sum() for t in top])
  chi2 = ((observed - n * p) ** 2 / (n * p)).sum()
  assert chi2 < 18.47, (chi2, observed, n * p)  # 99.9% quantile, 4 degrees of freedom


def _constrained_reference(model, prompt, responses, n, pad):
  """Greedy decoding restricted to `responses` written out: one full forward per step (float64
  logits over a fixed right-padded buffer, as `_argmax_decode`), the argmax over the next tokens
  of the responses the output so far begins."""
  length = len(prompt) + n
  forward = jax.jit(lambda tokens: model(tokens, jnp.arange(length)[None],
                                         M.causal_mask(jnp.ones((1, length), bool)))[0])
  out = []
  while len(out) < n:
    alive = [r for r in responses if r[:len(out)] == out and len(r) > len(out)]
    if not alive:
      break
    seq = np.zeros(length, np.int32)
    seq[:len(prompt) + len(out)] = prompt + out
    logits = np.asarray(forward(jnp.asarray(seq[None]))[0, len(prompt) + len(out) - 1],
                        np.float64)
    allowed = sorted({r[len(out)] for r in alive})
    out.append(allowed[int(np.argmax(logits[allowed]))])
  return out + [pad] * (n - len(out))


def test_greedy_restricted_to_responses_equals_written_out_reference():
  eos = 255
  model = M.init_model(M.get_config("tiny", eos_token_ids=(eos,)), seed=3)
  rs = np.random.RandomState(4)
  prompts = [rs.randint(3, 250, n).tolist() for n in (7, 4, 9)]
  # Shared prefixes, a response that is a prefix of another, and rows with fewer responses.
  responses = [[[5, 6, 7, eos], [5, 6, 8, eos], [5, 9, eos], [10, eos]],
               [[11, eos], [11, 12, eos]],
               [[20, 21, 22, 23, eos], [30, eos], [20, 21, eos]]]
  tokens, valid = G.left_pad(prompts, pad_id=0)
  allowed = G.response_array(responses, 6)
  assert allowed.shape == (3, 4, 6) and (allowed[1, 2:] == -1).all()
  out = G.greedy_generate(model, tokens, valid, 6, pad_id=0, responses=allowed)
  free = G.greedy_generate(model, tokens, valid, 6, pad_id=0)
  for row, prompt, rows in zip(out, prompts, responses):
    assert row.tolist() == _constrained_reference(model, prompt, rows, 6, 0)
    assert G.trim_at_eos(row.tolist(), [eos]) + [eos] in rows
  assert not any(G.trim_at_eos(r.tolist(), [eos]) + [eos] in rows
                 for r, rows in zip(free, responses))  # the restriction is what answers them
  # Sampled decoding keeps to the responses too (many draws of each prompt).
  many_tokens, many_valid = np.repeat(tokens, 20, axis=0), np.repeat(valid, 20, axis=0)
  drawn = G.generate(model, many_tokens, many_valid, 6, temperature=2.0, seed=1, pad_id=0,
                     responses=np.repeat(allowed, 20, axis=0))
  answered = [G.trim_at_eos(r.tolist(), [eos]) + [eos] for r in drawn]
  assert all(a in responses[k // 20] for k, a in enumerate(answered))
  assert len({tuple(a) for a in answered}) > len(responses)  # draws, not the greedy answers
  # Batched answers through greedy_answer_ids (chunks padded with the last prompt).
  answers = G.greedy_answer_ids(model, prompts, 0, batch_size=2, max_new_tokens=6,
                                responses=responses)
  assert answers == [G.trim_at_eos(r.tolist(), [eos]) for r in out]


def test_bad_responses_are_rejected():
  model = M.init_model(M.get_config("tiny", eos_token_ids=(255,)))
  tokens, valid = G.left_pad([[5, 6, 7]], pad_id=0)
  with pytest.raises(ValueError, match="must end with an EOS"):
    G.greedy_generate(model, tokens, valid, 4, responses=[[[5, 6], [7, 255]]])
  with pytest.raises(ValueError, match="do not fit max_new_tokens=2"):
    G.greedy_generate(model, tokens, valid, 2, responses=[[[5, 6, 255]]])
  with pytest.raises(ValueError, match="response 1\\) does not fit max_new_tokens=2"):
    G.response_array([[[5, 255], [5, 6, 255]]], 2)
  with pytest.raises(ValueError, match="at least one allowed response"):
    G.greedy_generate(model, tokens, valid, 4, responses=np.full((1, 2, 3), -1))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    G.greedy_generate(model, tokens, valid, 4, responses=[[[300, 255]]])
