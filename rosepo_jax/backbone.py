"""What `config.model` means: the architecture it names and the model SFT starts from.

`config.model.init` is "scratch" (the `preset` with `overrides`, sized to the tokenizer) or a
pretrained checkpoint (a .gguf file, pkg:NAME, a Hugging Face folder or an orbax model dir).
`lora_rank > 0` adds LoRA adapters (with title tokens, their rows train with the adapters); from
scratch, `copy_init_layers` start as copy heads.
"""

from __future__ import annotations

import numpy as np

from rosepo_jax import checkpoints, files
from rosepo_jax import model as model_lib
from rosepo_jax.checkpoints import params as P
from rosepo_jax.config import ModelSection
from rosepo_jax.data.codec import Codec


def _dtypes(m: ModelSection) -> dict:
  return dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat)


def model_vocab_size(m: ModelSection, checkpoint_vocab: int, codec_vocab: int) -> int:
  """The vocabulary `build_model` gives the model for a codec of `codec_vocab` ids: from scratch,
  the codec's rounded up to a multiple of 64; pretrained, the checkpoint's `checkpoint_vocab`,
  grown to hold title tokens (`with_title_tokens`)."""
  if m.init == "scratch":
    return -(-codec_vocab // 64) * 64
  return max(checkpoint_vocab, codec_vocab)


def architecture(m: ModelSection, codec_vocab: int = 0,
                 title_tokens: int = 0) -> model_lib.ModelConfig:
  """The configured architecture without loading weights: the checkpoint's config when
  `m.init` exists on this machine, else the `m.preset` with `m.overrides` (LoRA included);
  `codec_vocab` > 0: with the vocabulary `build_model` gives it for a codec of that many ids
  whose last `title_tokens` are title tokens, else the checkpoint's or preset's."""
  init = checkpoints.resolve_model_path(m.init) if m.init != "scratch" else ""
  if init and files.exists(init):
    cfg = checkpoints.read_model_config(init).replace(**_dtypes(m))
  else:
    if m.init != "scratch" and not m.preset:
      raise ValueError(f"config.model.init={m.init!r} is not on this machine and config.model "
                       "has no preset to describe it")
    cfg = model_lib.get_config(m.preset, **m.overrides, **_dtypes(m))
  if codec_vocab:
    cfg = cfg.replace(vocab_size=model_vocab_size(m, cfg.vocab_size, codec_vocab))
  if m.lora_rank:
    rows = (codec_vocab - title_tokens, title_tokens) if codec_vocab and title_tokens else (0, 0)
    cfg = cfg.replace(lora_rank=m.lora_rank, lora_alpha=m.lora_alpha, lora_token_rows=rows)
  return cfg


def build_model(m: ModelSection, codec: Codec, item_table=None) -> model_lib.Decoder:
  """The SFT starting point: the preset initialised from scratch (with copy heads in
  `m.copy_init_layers`; its vocabulary covers every id of `codec`, title tokens included), or
  the pretrained checkpoint; LoRA adapters added when configured. With
  `m.item_embeddings="oracle"`, `item_table` [items, dim] (the oracle's item embeddings) feeds
  the title tokens' hybrid embeddings."""
  if m.init == "scratch":
    cfg = model_lib.get_config(m.preset, vocab_size=model_vocab_size(m, 0, codec.vocab_size),
                               bos_token_id=None, eos_token_ids=(codec.eos_token_id,),
                               pad_token_id=codec.pad_token_id, **m.overrides, **_dtypes(m))
    model = model_lib.init_model(cfg, seed=m.seed)
    if m.copy_init_layers:
      model = model_lib.init_copy_heads(model, m.copy_init_layers, m.copy_init_gain, seed=m.seed)
  else:
    if m.copy_init_layers:
      raise ValueError(f"config.model.copy_init_layers={m.copy_init_layers} applies only to a "
                       f"model trained from scratch, not to config.model.init={m.init!r}")
    model = checkpoints.load_model(m.init, **_dtypes(m))
    if codec.item_tokens:
      model = with_title_tokens(model, codec)
    if model.cfg.vocab_size < codec.vocab_size:
      raise ValueError(f"config.model.init={m.init}: vocabulary {model.cfg.vocab_size} is "
                       f"smaller than the tokenizer's {codec.vocab_size}")
  if m.item_embeddings == "oracle":
    if item_table is None or len(item_table) != len(codec.titles):
      raise ValueError(f"config.model.item_embeddings='oracle' needs the oracle's embedding of "
                       f"each of the {len(codec.titles)} titles")
    model = model_lib.add_item_embeddings(model, item_table, codec.title_offset, seed=m.seed)
  return add_lora(m, model, codec)


def with_title_tokens(model: model_lib.Decoder, codec: Codec) -> model_lib.Decoder:
  """A pretrained `model` whose vocabulary holds `codec`'s item tokens (ids title_offset + item:
  title tokens or item slots): each one's input embedding, and its output embedding when the
  head is untied, starts as the mean of the rows of the title's subword tokens
  (`Codec.title_text_ids`), so the model reads it roughly as it read the title's text. Rows past
  the tokenizer that the checkpoint already had (padding rows no text produces) are taken over
  first; the vocabulary grows by what is still missing."""
  cfg = model.cfg
  first, count = codec.title_offset, len(codec.titles)
  vocab = max(cfg.vocab_size, codec.vocab_size)  # codec.vocab_size == first + count
  text_ids = [list(codec.title_text_ids(t)) for t in codec.titles]
  tensors = {}
  for name, array in P.iter_tensors(model):
    if name.path in (("embed",), ("lm_head", "kernel")):
      rows_VxD = array if name.path == ("embed",) else array.T  # lm_head kernel is [D, V]
      means_NxD = np.stack([rows_VxD[ids].astype(np.float64).mean(axis=0) for ids in text_ids])
      grown = np.zeros((vocab, rows_VxD.shape[1]), rows_VxD.dtype)
      grown[:cfg.vocab_size] = rows_VxD
      grown[first:first + count] = means_NxD.astype(rows_VxD.dtype)
      array = grown if name.path == ("embed",) else grown.T
    tensors[name.path] = array
  return P.model_from_tensors(cfg.replace(vocab_size=vocab), lambda name: tensors[name.path],
                              "title tokens")


def lora_token_rows(codec: Codec) -> tuple[int, int]:
  """(first, count): the vocabulary rows that train with LoRA adapters, `codec`'s item tokens
  (title tokens or item slots)."""
  return (codec.title_offset, len(codec.titles)) if codec.item_tokens else (0, 0)


def add_lora(m: ModelSection, model: model_lib.Decoder, codec: Codec) -> model_lib.Decoder:
  """`model` with the configured LoRA adapters (unchanged when lora_rank is 0); with title
  tokens, their rows train with the adapters (a title token is both an input and the answer)."""
  if not m.lora_rank:
    return model
  return model_lib.add_lora(model, m.lora_rank, m.lora_alpha, seed=m.seed,
                            token_rows=lora_token_rows(codec))
