"""Titles as tokens (rosepo_jax/data/codec.py): one token per catalogue title, placed where the
template put it, decoded back to the title; titles as text unchanged."""

import os

import pytest

from rosepo_jax.data import prompts, records
from rosepo_jax.data import tokenizer as tokenizer_lib
from rosepo_jax.data.codec import Codec
from test_data_records import SHARED, needs_shared

# Titles that are template words ("Which", "Answer", "Love", "Yes"), hold a list separator, quotes,
# slashes, double spaces or non-ASCII letters.
TRICKY = ("Love", "Yes", "Which", "Answer", "these", "AC/DC", "Guns N' Roses", 'The "Band"',
          "Sigur Rós", "Crosby, Stills & Nash", "Motörhead", "Björk", "spaced  out", "東京事変",
          "- dash", "a, b, c", "Which one of these")


def _codec(titles, title_tokens=True):
  template = prompts.DEFAULT_TEMPLATES["music"]["lines"]
  texts = [text for text, is_title in prompts.render_pieces(template, ["x"], ["y"], "lines")
           if not is_title] * 20
  tok = tokenizer_lib.train_bpe(texts, 300)
  return Codec(tok, list(titles) if title_tokens else None)


def test_every_title_round_trips_through_one_token():
  codec = _codec(TRICKY)
  assert codec.vocab_size == len(codec.tokenizer) + len(TRICKY)
  for item, title in enumerate(TRICKY):
    token = codec.title_offset + item
    assert codec.encode_response(title) == (token, codec.eos_token_id)
    assert codec.decode([token]) == title
  with pytest.raises(KeyError, match="not a title of the catalogue"):
    codec.encode_response("Lov")
  # A title with titles as text is its text.
  text = _codec(TRICKY, title_tokens=False)
  assert text.encode_response("Love") == text.text_ids([" Love"])[0] + (text.eos_token_id,)


@pytest.mark.parametrize("title_format", ["comma", "lines"])
def test_titles_are_placed_by_position_never_matched_in_the_template(title_format):
  """Titles named like template words ("Which", "Answer", "these") get their token only where the
  template puts a title; the template's own words stay text, and the ids decode to the exact
  prompt text."""
  codec = _codec(TRICKY)
  template = prompts.DEFAULT_TEMPLATES["music"][title_format]
  history = ["Which", "Love", "Sigur Rós"]
  candidates = ["Answer", "Yes", "these", "東京事変"]
  pieces = prompts.render_pieces(template, history, candidates, title_format)
  (ids,) = codec.encode_prompts([pieces])
  offset = codec.title_offset
  assert [i - offset for i in ids if i >= offset] == [TRICKY.index(t) for t in history + candidates]
  assert codec.decode(ids) == prompts.render_prompt(template, history, candidates, title_format)
  text_only = [i for i in ids if i < offset]
  assert codec.tokenizer.decode(text_only).count("Which") == 1  # the template's question
  assert codec.tokenizer.decode(text_only).count("Answer") == 1


@pytest.mark.parametrize("title_format", ["comma", "lines"])
def test_item_slots_follow_each_title_of_the_text_prompt(title_format, tmp_path):
  """Item slots (titles as text, LLaRA's hybrid prompt): the text-title prompt's ids with each
  title's item token right after the token that completes the title (the text before the slot
  reaches the title's end, without its last token it does not); answers stay text; a slot
  decodes to nothing; the codec saves and loads with its slots."""
  text = _codec(TRICKY, title_tokens=False)
  slots = Codec(text.tokenizer, list(TRICKY), slots=True)
  assert slots.item_tokens and not slots.title_tokens and slots.vocab_size == text.vocab_size + len(TRICKY)
  template = prompts.DEFAULT_TEMPLATES["music"][title_format]
  history = ["Which", "Love", "AC/DC", "spaced  out"]
  candidates = ["Answer", "Yes", "these", "Guns N' Roses", "- dash"]
  pieces = prompts.render_pieces(template, history, candidates, title_format)
  prompt = prompts.render_prompt(template, history, candidates, title_format)
  ((want,), (ids,)) = text.encode_prompts([pieces]), slots.encode_prompts([pieces])
  offset = slots.title_offset
  assert [i for i in ids if i < offset] == list(want)
  assert [i - offset for i in ids if i >= offset] == [TRICKY.index(t) for t in history + candidates]
  ends = []  # where each title ends in the prompt text
  at = 0
  for piece, is_title in pieces:
    at += len(piece)
    if is_title:
      ends.append(at)
  for k, end in zip([k for k, i in enumerate(ids) if i >= offset], ends):
    before = [i for i in ids[:k] if i < offset]
    assert prompt.startswith(text.tokenizer.decode(before))
    assert len(text.tokenizer.decode(before)) >= end > len(text.tokenizer.decode(before[:-1]))
  assert slots.decode(ids) == prompt
  assert slots.encode_response("Love") == text.encode_response("Love")
  slots.save_pretrained(str(tmp_path))
  loaded = Codec.load(str(tmp_path))
  assert loaded.slots and loaded.encode_prompts([pieces]) == [ids]


def test_titles_as_text_tokenize_the_joined_prompt():
  codec = _codec(TRICKY, title_tokens=False)
  template = prompts.DEFAULT_TEMPLATES["music"]["comma"]
  pieces = prompts.render_pieces(template, ["Love"], ["Yes", "Björk"], "comma")
  text = prompts.render_prompt(template, ["Love"], ["Yes", "Björk"], "comma")
  assert codec.encode_prompts([pieces]) == [codec.text_ids([text])[0]]
  assert codec.vocab_size == len(codec.tokenizer)


@needs_shared
@pytest.mark.parametrize("name", ["lastfm", "movielens100k"])
def test_every_title_of_a_real_catalogue_round_trips(name):
  """Every LastFM artist and MovieLens title (commas, quotes, non-ASCII) is one token and back."""
  if name == "lastfm":
    raw = records.read_lastfm(os.path.join(SHARED, "llara_lastfm"))
  else:
    raw = records.read_movielens(os.path.join(SHARED, "movielens_100k"))
  codec = _codec(raw.titles)
  assert any("," in t for t in raw.titles) and any(not t.isascii() for t in raw.titles)
  for item, title in enumerate(raw.titles):
    token, eos = codec.encode_response(title)
    assert (token, eos) == (codec.title_offset + item, codec.eos_token_id)
    assert codec.decode([token]) == title


def test_smollm2_with_title_tokens_exports_and_answers_like_ours(smollm2_gguf, tmp_path):
  """SmolLM2 grown by one token per title: each new embedding row is the mean of the title's
  subword rows (float64 reference), the old rows are untouched; the HF export loads in
  transformers, whose greedy answers on 20 prompts (ids in, ids out) equal ours."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
  from conftest import context  # pylint: disable=g-import-not-at-top
  from rosepo_jax import backbone, checkpoints, generate  # pylint: disable=g-import-not-at-top
  from rosepo_jax.stages import data as data_stage  # pylint: disable=g-import-not-at-top
  from test_data_pipeline import _config  # pylint: disable=g-import-not-at-top
  config = _config("synthetic_smollm2.py")
  config.data.world.num_users = 60
  config.tokenizer.title_tokens = True
  config.model.lora_rank = 0
  ctx = context(config, tmp_path / "w")
  data_stage.run(ctx)
  codec = ctx.codec
  base = checkpoints.load_model(smollm2_gguf)
  model = backbone.build_model(ctx.config.model, codec)
  old = np.asarray(base.embed[...], np.float64)
  new = np.asarray(model.embed[...], np.float64)
  assert new.shape[0] >= codec.vocab_size and codec.title_offset == len(ctx.tokenizer)
  np.testing.assert_array_equal(new[:old.shape[0]][:codec.title_offset], old[:codec.title_offset])
  for item, title in enumerate(ctx.dataset.titles):
    want = old[list(codec.title_text_ids(title))].mean(axis=0)
    np.testing.assert_allclose(new[codec.title_offset + item], want, rtol=1e-5, atol=1e-7)
  folder = str(tmp_path / "hf")
  checkpoints.save_hf(model, folder, tokenizer=codec)
  theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  saved = Codec.load(folder)
  prompt_ids = [p for p, _ in ctx.encoded_examples("test")[:20]]
  for ex, ids in zip(ctx.dataset.examples("test"), prompt_ids):
    assert [i - codec.title_offset for i in ids if i >= codec.title_offset] == list(
        ex.history + ex.candidates)
  answers = generate.greedy_answers(model, codec, prompt_ids, 20, 2)  # title token, EOS
  for ids, answer in zip(prompt_ids, answers):
    out = theirs.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False,
                          eos_token_id=codec.eos_token_id, pad_token_id=codec.pad_token_id)
    new_ids = generate.trim_at_eos(out[0, len(ids):].tolist(), (codec.eos_token_id,))
    assert saved.decode(new_ids).strip() == answer
