"""Batching: row layout, prefix-shared attention, buckets, deterministic order, process slices."""

from conftest import assert_close
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import model as M
from rosepo_jax.data import batching as B
from rosepo_jax.data.codec import Codec


def test_pack_layout_and_scored_tokens():
  row = B.EncodedRow(prompt=(5, 6, 7), responses=((8, 2), (9, 10, 2)))
  out = B.pack([row, None], seq_len=10, score_len=6, num_responses=2)
  np.testing.assert_array_equal(out["tokens"][0], [5, 6, 7, 8, 2, 9, 10, 2, 0, 0])
  np.testing.assert_array_equal(out["segments"][0], [1, 1, 1, 2, 2, 3, 3, 3, 0, 0])
  np.testing.assert_array_equal(out["positions"][0], [0, 1, 2, 3, 4, 3, 4, 5, 0, 0])
  # response 0 (8, 2): 8 predicted at the last prompt position 2, then 2 at position 3.
  # response 1 (9, 10, 2): 9 predicted at position 2 too, then at 5 and 6.
  np.testing.assert_array_equal(out["score_pos"][0], [2, 3, 2, 5, 6, 0])
  np.testing.assert_array_equal(out["score_tok"][0], [8, 2, 9, 10, 2, 0])
  np.testing.assert_array_equal(out["score_seg"][0], [0, 0, 1, 1, 1, -1])
  assert out["row_valid"].tolist() == [True, False] and not out["segments"][1].any()


def test_prompt_targets_are_scored_from_the_position_before():
  """A row's `targets` (prompt positions) are scored tokens too: each predicted from the prompt
  position before it, marked PROMPT_SCORE (-2), after the responses' tokens."""
  row = B.EncodedRow(prompt=(5, 6, 7, 4), responses=((8, 2),), targets=(1, 3))
  assert row.scored == 4
  out = B.pack([row], seq_len=8, score_len=6, num_responses=1)
  np.testing.assert_array_equal(out["score_pos"][0], [3, 4, 0, 2, 0, 0])
  np.testing.assert_array_equal(out["score_tok"][0], [8, 2, 6, 4, 0, 0])
  np.testing.assert_array_equal(out["score_seg"][0], [0, 0, -2, -2, -1, -1])
  with pytest.raises(ValueError, match="targets .* must be prompt positions"):
    B.pack([B.EncodedRow((5, 6), ((8, 2),), targets=(0,))], 8, 6, 1)


def test_prefix_shared_logits_equal_separate_sequences():
  model = M.init_model(M.get_config("tiny"), seed=5)
  rs = np.random.RandomState(0)
  prompt = tuple(rs.randint(3, 256, 7).tolist())
  responses = tuple(tuple(rs.randint(3, 256, n).tolist()) + (2,) for n in (2, 4, 1))
  batch = B.make_batch([B.EncodedRow(prompt, responses)], B.BatchShape(seq_multiple=8), 3)
  segments = jnp.asarray(batch["segments"])
  logits, _ = model(jnp.asarray(batch["tokens"]), jnp.asarray(batch["positions"]),
                    M.prefix_shared_mask(segments))
  shared = np.asarray(logits[0])[batch["score_pos"][0]]
  r = 0
  for resp in responses:  # naive: one [prompt, response] sequence per response
    seq = jnp.asarray([prompt + resp])
    valid = jnp.ones_like(seq, bool)
    alone, _ = model(seq, M.positions_from_mask(valid), M.causal_mask(valid))
    want = np.asarray(alone[0, len(prompt) - 1:-1])  # logits that predict each response token
    assert_close(shared[r:r + len(resp)], want)
    r += len(resp)


def test_buckets_bound_shapes_and_never_truncate():
  shape = B.BatchShape(max_seq_len=128, seq_multiple=64, score_multiple=16)
  rows = [B.EncodedRow(tuple(range(n)), ((1, 2),)) for n in (10, 61)]
  assert shape.lengths(rows) == (64, 16)
  assert shape.lengths(rows + [B.EncodedRow(tuple(range(70)), ((1,) * 20,))]) == (128, 32)
  with pytest.raises(ValueError, match="129 tokens > max_seq_len=128"):
    shape.lengths([B.EncodedRow(tuple(range(127)), ((1, 2),))])


def test_step_sampler_is_a_pure_function_of_step():
  s = B.StepSampler(num_examples=10, global_batch=4, seed=3)
  stream = np.concatenate([s.global_indices(i) for i in range(5)])  # 20 = two full epochs
  assert sorted(stream[:10].tolist()) == list(range(10))
  assert sorted(stream[10:].tolist()) == list(range(10))
  assert not np.array_equal(stream[:10], stream[10:])  # reshuffled per epoch
  again = B.StepSampler(num_examples=10, global_batch=4, seed=3)
  np.testing.assert_array_equal(again.global_indices(3), s.global_indices(3))  # resume
  assert not np.array_equal(B.StepSampler(10, 4, seed=4).global_indices(0), s.global_indices(0))


def test_processes_read_disjoint_slices_of_the_global_batch():
  parts = [B.StepSampler(100, 8, seed=0, process_index=p, process_count=4).local_indices(7)
           for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts),
                                B.StepSampler(100, 8, seed=0).global_indices(7))
  with pytest.raises(ValueError, match="not divisible"):
    B.StepSampler(100, 6, seed=0, process_count=4)


def test_eval_batches_pad_last_chunk():
  chunks = list(B.eval_batches(5, 2))
  assert [c.tolist() for c in chunks] == [[0, 1], [2, 3], [4, -1]]


def test_encode_prompts_equals_one_call_per_prompt():
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  texts = ["History: Kamo Jazz, Tilu Rock.\nCandidates: Zaba Disco, Besi Opera.\nAnswer:",
           "Candidates: Tilu Rock.\nAnswer:", "x"]
  raw = Tokenizer(models.BPE(unk_token=None))
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok = PreTrainedTokenizerFast(tokenizer_object=raw)
  codec = Codec(tok)
  assert codec.encode_prompts([[(t, False)] for t in texts]) == [
      tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
  assert codec.encode_prompts([]) == []
