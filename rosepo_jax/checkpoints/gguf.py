"""llama.cpp GGUF files: config from metadata, dequantised weights, tokenizer from metadata.

llama.cpp's converter stores the q/k projections of llama-architecture models in a rope-permuted
row order (interleaved pairs); we undo that so the weights match the HF rotate-half layout.
The tokenizer is rebuilt with the `tokenizers` library from ``tokenizer.ggml.*`` metadata, so an
exported HF folder is complete without torch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rosepo_jax.checkpoints import params as P
from rosepo_jax.checkpoints.errors import CheckpointError, CheckpointNotFoundError
from rosepo_jax.model import Decoder, ModelConfig

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")


def _reader(path: str):
  try:
    import gguf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf "
                      "(or rosepo-jax[gguf])") from e
  if not os.path.isfile(path):
    raise CheckpointNotFoundError(f"{path}: GGUF file not found")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError/struct errors on bad magic or truncation
    raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None
  reader.gguf_path = path  # for error messages
  return reader


def _field(reader, key: str, default: Any = None, required: bool = False):
  f = reader.fields.get(key)
  if f is None:
    if required:
      raise CheckpointError(f"{reader.gguf_path}: required GGUF metadata field {key!r} is missing")
    return default
  return f.contents()


def unpermute_rope(w_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation ([out, in] layout, out = heads * head_dim)."""
  out = w_OxI.shape[0]
  rest = w_OxI.shape[1:]
  return (w_OxI.reshape(num_heads, out // num_heads // 2, 2, *rest)
          .swapaxes(1, 2).reshape(w_OxI.shape))


def config_from_gguf(reader, **overrides: Any) -> ModelConfig:
  arch = _field(reader, "general.architecture", required=True)
  if arch not in SUPPORTED_ARCHITECTURES:
    raise CheckpointError(f"{reader.gguf_path}: general.architecture={arch!r} is not supported "
                     f"(supported: {list(SUPPORTED_ARCHITECTURES)})")
  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise CheckpointError(f"{reader.gguf_path}: tensor 'rope_freqs.weight' (llama3 RoPE scaling in GGUF "
                     "form) is not supported; convert from the HF folder instead")
  if _field(reader, f"{arch}.expert_count"):
    raise CheckpointError(f"{reader.gguf_path}: field {arch}.expert_count: mixture-of-experts is not "
                     "supported")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  hidden = int(_field(reader, f"{arch}.embedding_length", required=True))
  heads = int(_field(reader, f"{arch}.attention.head_count", required=True))
  eos = _field(reader, "tokenizer.ggml.eos_token_id")
  cfg = ModelConfig(
      vocab_size=int(_field(reader, f"{arch}.vocab_size", len(tokens) if tokens else 0)),
      hidden_size=hidden,
      intermediate_size=int(_field(reader, f"{arch}.feed_forward_length", required=True)),
      num_layers=int(_field(reader, f"{arch}.block_count", required=True)),
      num_heads=heads,
      num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
      head_dim=int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
      rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
      rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_word_embeddings="output.weight" not in names,
      qkv_bias="blk.0.attn_q.bias" in names,
      o_bias="blk.0.attn_output.bias" in names,
      max_position_embeddings=int(_field(reader, f"{arch}.context_length", 4096)),
      architecture=arch,
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_token_ids=() if eos is None else (int(eos),),
      pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"))
  if cfg.vocab_size <= 0:
    raise CheckpointError(f"{reader.gguf_path}: cannot tell the vocabulary size ({arch}.vocab_size and "
                     "tokenizer.ggml.tokens are both missing)")
  return cfg.replace(**overrides)


def _dequantize(tensor) -> np.ndarray:
  import gguf  # pylint: disable=g-import-not-at-top
  shape = tuple(int(d) for d in reversed(tensor.shape))  # ggml lists dims innermost first
  if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
    return np.asarray(tensor.data, np.float32).reshape(shape)
  return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)


def load_gguf(path: str, mesh=None, **overrides: Any) -> Decoder:
  """Imports a llama/qwen2 GGUF file (any gguf-supported quantisation, dequantised to fp32)."""
  reader = _reader(path)
  cfg = config_from_gguf(reader, **overrides)
  tensors = {t.name: t for t in reader.tensors}
  names = P.param_names(cfg)
  missing = [n.gguf for n in names if n.gguf not in tensors]
  if missing:
    raise P.missing_error(path, missing, list(tensors))
  permuted = cfg.architecture == "llama"

  def get(name: P.ParamName) -> np.ndarray:
    w = _dequantize(tensors[name.gguf])
    if permuted and name.path[-2:-1] in (("q_proj",), ("k_proj",)):  # kernels and biases
      w = unpermute_rope(w, cfg.num_heads if name.path[-2] == "q_proj" else cfg.num_kv_heads)
    return P.from_theirs(name, w)

  return P.model_from_tensors(cfg, get, path, mesh)


# Byte-level BPE pre-tokenizers by `tokenizer.ggml.pre` (llama.cpp's names).
def _pre_tokenizer(pre: str, path: str):
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
  if pre in ("default", "gpt2"):
    return byte_level
  if pre == "smollm":
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  raise CheckpointError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported yet (supported: "
                   "default, gpt2, smollm); give an HF tokenizer folder with --tokenizer instead")


def tokenizer_from_gguf(path: str):
  """A transformers PreTrainedTokenizerFast rebuilt from GGUF metadata (byte-level BPE)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, processors  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  reader = _reader(path)
  kind = _field(reader, "tokenizer.ggml.model", required=True)
  if kind != "gpt2":
    raise CheckpointError(f"{path}: tokenizer.ggml.model={kind!r} is not supported yet (supported: "
                     "gpt2, i.e. byte-level BPE)")
  tokens = list(_field(reader, "tokenizer.ggml.tokens", required=True))
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", required=True)]
  types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             fuse_unk=False, byte_fallback=False))
  tok.pre_tokenizer = _pre_tokenizer(_field(reader, "tokenizer.ggml.pre", "default"), path)
  tok.decoder = decoders.ByteLevel()
  # llama.cpp token types: 3 = control, 4 = user-defined; both are added tokens, never split.
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty in (3, 4)])

  def token(key):
    i = _field(reader, key)
    return None if i is None else tokens[int(i)]

  bos = token("tokenizer.ggml.bos_token_id")
  if _field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, int(_field(reader, "tokenizer.ggml.bos_token_id")))])
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=bos, eos_token=token("tokenizer.ggml.eos_token_id"),
      unk_token=token("tokenizer.ggml.unknown_token_id"),
      pad_token=token("tokenizer.ggml.padding_token_id"),
      chat_template=_field(reader, "tokenizer.chat_template"))
