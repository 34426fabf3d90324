"""Decoder-only transformer LM of the LLaMA and Qwen2 families, in Flax NNX, with a KV cache.

Numerics follow Hugging Face transformers exactly (RMSNorm in fp32, rotate-half RoPE computed in
fp32, fp32 softmax), so that imported checkpoints reproduce transformers' logits.

Shape suffixes: B batch, T query length, S key length (T without cache, cache length with it),
D hidden size, N query heads, K key/value heads, G = N // K, H head dim, F MLP size, V vocab.

The forward always takes explicit positions and an explicit boolean attention mask
``mask_BxTxS`` (True = may attend), so left padding, packing and prefix sharing are all exact;
`causal_mask` and `segment_mask` build the usual ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rosepo_jax.sharding import shard

ARCHITECTURES = ("llama", "qwen2")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAParam(nnx.Param):
  """A LoRA adapter weight (low-rank factors, token-row deltas): the only trainable parameters
  when LoRA is on."""


class FrozenParam(nnx.Param):
  """A parameter saved with the model and never trained (the oracle's item embeddings)."""


def trainable(cfg: "ModelConfig"):
  """The nnx filter of the parameters training updates: the LoRA adapters when the model has
  them, and with hybrid item embeddings also their projection (new to the backbone, like the
  title rows that train as token-row deltas); else every parameter but the frozen ones."""
  if not cfg.lora_rank:
    return nnx.All(nnx.Param, nnx.Not(FrozenParam))
  if not cfg.item_rows[1]:
    return LoRAParam
  return nnx.Any(LoRAParam, nnx.PathContains("item_in"), nnx.PathContains("item_out"))


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style RoPE frequency scaling (HF ``rope_type: llama3``)."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of a decoder. Field names follow Hugging Face where they exist."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2: bias on q/k/v projections.
  o_bias: bool = False  # Llama `attention_bias=True` puts a bias on q/k/v/o.
  max_position_embeddings: int = 4096
  architecture: str = "llama"  # HF model_type written on export: llama | qwen2.
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  param_dtype: str = "float32"  # storage dtype of parameters
  dtype: str = "float32"  # compute dtype of activations and matmuls
  remat: bool = False  # rematerialise each block in the backward pass
  lora_rank: int = 0  # > 0: LoRA adapters on `lora_targets` (base weights then stay frozen)
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                   "up_proj", "down_proj")
  # (first, count): with LoRA, the vocabulary rows first .. first + count - 1 (title tokens) train
  # with the adapters, as deltas on their input (and untied output) embeddings; (0, 0): none.
  lora_token_rows: tuple[int, int] = (0, 0)
  # Hybrid item embeddings (LLaRA): (first, count) vocabulary rows (title tokens) whose input
  # embedding gains a learned 2-layer projection of a frozen item embedding of `item_dim` (the
  # SASRec oracle's); (0, 0): none.
  item_rows: tuple[int, int] = (0, 0)
  item_dim: int = 0

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name}={value!r}: expected an integer >= 1")
    for name in ("rope_theta", "rms_norm_eps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"ModelConfig.{name}={value!r}: expected a number > 0")
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"ModelConfig.architecture={self.architecture!r}; expected one of "
                       f"{ARCHITECTURES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"ModelConfig: num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
    unknown = set(self.lora_targets) - set(LINEAR_NAMES)
    if unknown:
      raise ValueError(f"ModelConfig.lora_targets has unknown projections {sorted(unknown)}; "
                       f"expected some of {LINEAR_NAMES}")
    first, count = self.lora_token_rows
    if count and (not self.lora_rank or first < 0 or count < 0 or first + count > self.vocab_size):
      raise ValueError(f"ModelConfig.lora_token_rows={self.lora_token_rows}: expected (first, "
                       f"count) rows inside the vocabulary of {self.vocab_size}, with lora_rank > 0")
    first, count = self.item_rows
    if count and (self.item_dim < 1 or first < 0 or first + count > self.vocab_size
                  or (self.lora_rank and self.lora_token_rows != self.item_rows)):
      raise ValueError(f"ModelConfig.item_rows={self.item_rows}, item_dim={self.item_dim}: "
                       f"expected rows inside the vocabulary of {self.vocab_size}, item_dim >= 1 "
                       "and, under LoRA, the rows that train with the adapters "
                       f"(lora_token_rows={self.lora_token_rows})")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected float32, "
                         "bfloat16 or float16")

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def num_params(self) -> int:
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    attn += self.qkv_bias * h * (self.num_heads + 2 * self.num_kv_heads) + self.o_bias * d
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_word_embeddings else self.vocab_size * d
    items = (self.item_rows[1] * self.item_dim + self.item_dim * d + 2 * d + d * d
             if self.item_rows[1] else 0)
    return self.vocab_size * d + self.num_layers * per_layer + d + head + items


PRESETS: dict[str, ModelConfig] = {
    # Test sizes: GQA (4 heads over 2 KV heads), tied and untied, with and without biases.
    "tiny": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512,
                        bos_token_id=1, eos_token_ids=(2,), pad_token_id=0),
    "tiny_qwen2": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6,
                              rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=True,
                              architecture="qwen2", max_position_embeddings=512,
                              bos_token_id=1, eos_token_ids=(2,), pad_token_id=0),
    "smollm2_135m": ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                                rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                max_position_embeddings=8192, bos_token_id=1, eos_token_ids=(2,),
                                pad_token_id=2),
    "qwen2_5_0_5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                                rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                qkv_bias=True, architecture="qwen2",
                                max_position_embeddings=32768, bos_token_id=151643,
                                eos_token_ids=(151645, 151643), pad_token_id=151643),
    "llama3_8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                             rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                             bos_token_id=128000, eos_token_ids=(128001, 128009)),
    "llama2_7b": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                             num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                             rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096,
                             bos_token_id=1, eos_token_ids=(2,)),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
  """A preset by name, with field overrides (e.g. ``dtype="bfloat16"``)."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def config_to_dict(cfg: ModelConfig) -> dict:
  """JSON-ready dict of every ModelConfig field."""
  return dataclasses.asdict(cfg)


def config_from_dict(d: dict, source: str = "model config") -> ModelConfig:
  """Inverse of `config_to_dict`; unknown fields are an error naming them."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"{source}: unknown ModelConfig field(s) {unknown}")
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
  for name in ("lora_targets", "lora_token_rows", "item_rows"):
    if name in d:
      d[name] = tuple(d[name])
  return ModelConfig(**d)


# ----------------------------------------------------------------------------------------------
# Masks and positions.


def causal_mask(valid_BxT: jax.Array) -> jax.Array:
  """Causal mask over one sequence per row; padded keys (valid=False) are never attended.

  Returns bool [B, T, T]. Rows of padded queries may attend nothing; their outputs are unused.
  """
  t = valid_BxT.shape[1]
  causal_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))
  return causal_TxT[None] & valid_BxT[:, None, :].astype(bool)


def segment_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """Causal mask for packed rows: tokens attend within their own segment; id 0 is padding."""
  seg = segment_ids_BxT
  same_BxTxT = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
  t = seg.shape[1]
  return same_BxTxT & jnp.tril(jnp.ones((t, t), dtype=bool))[None]


def prefix_shared_mask(segments_BxT: jax.Array) -> jax.Array:
  """Mask for rows ``[prompt, response_0, ..., response_k]`` (segment ids: 0 padding, 1 prompt,
  j + 2 response j): causal, and every response sees the prompt and itself only."""
  seg = segments_BxT
  key_ok = (seg[:, None, :] == 1) | (seg[:, None, :] == seg[:, :, None])
  t = seg.shape[1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
  return causal & key_ok & (seg[:, None, :] > 0)


def positions_from_mask(valid_BxT: jax.Array) -> jax.Array:
  """Positions 0,1,2,... over valid tokens (left padding gets position 0), int32 [B, T]."""
  valid = valid_BxT.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)


# ----------------------------------------------------------------------------------------------
# RoPE.


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """Inverse frequencies [H/2] in fp32, Llama-3 scaled when configured (as transformers)."""
  h = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  s = cfg.rope_scaling
  if s is None:
    return inv_freq
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor))
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def rope_sin_cos(cfg: ModelConfig, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """sin, cos tables [B, T, H] in fp32 for the HF rotate-half layout."""
  freqs_BxTxh = positions_BxT.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
  emb_BxTxH = jnp.concatenate([freqs_BxTxh, freqs_BxTxh], axis=-1)
  return jnp.sin(emb_BxTxH), jnp.cos(emb_BxTxH)


def apply_rope(x_BxTxNxH: jax.Array, sin_BxTxH: jax.Array, cos_BxTxH: jax.Array) -> jax.Array:
  half = x_BxTxNxH.shape[-1] // 2
  rotated = jnp.concatenate([-x_BxTxNxH[..., half:], x_BxTxNxH[..., :half]], axis=-1)
  sin = sin_BxTxH[:, :, None, :].astype(x_BxTxNxH.dtype)
  cos = cos_BxTxH[:, :, None, :].astype(x_BxTxNxH.dtype)
  return x_BxTxNxH * cos + rotated * sin


# ----------------------------------------------------------------------------------------------
# KV cache.


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, ``k[l]``/``v[l]`` of shape [B, S, K, H].

  ``index`` (int32 scalar) is the slot where the next chunk of tokens is written. Which slots
  are valid is the caller's business: it is encoded in the mask passed to the forward.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  index: jax.Array

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "KVCache":
    dtype = dtype or cfg.dtype
    shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return cls(k=zeros, v=zeros, index=jnp.zeros((), jnp.int32))

  @property
  def length(self) -> int:
    return self.k[0].shape[1]


# ----------------------------------------------------------------------------------------------
# Layers.


def _normal(rngs: nnx.Rngs, shape, dtype, std=0.02):
  """normal(0, std) drawn in fp32 then cast: the same init whatever the storage dtype."""
  return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias) (+ scale * (x @ lora_a) @ lora_b); kernel [in, out].

  With a LoRA rank, lora_a [in, r] starts normal(1/r) and lora_b [r, out] at zero, so the
  adapted layer starts equal to the base one; scale = lora_alpha / r.
  """

  def __init__(self, in_dim: int, out_dim: int, axes: tuple[str, str], *, use_bias: bool,
               cfg: ModelConfig, rngs: nnx.Rngs, lora: bool = False):
    self.kernel = nnx.Param(_normal(rngs, (in_dim, out_dim), cfg.param_dtype), logical_axes=axes)
    self.bias = (nnx.Param(jnp.zeros((out_dim,), cfg.param_dtype), logical_axes=(axes[1],))
                 if use_bias else None)
    self.dtype = jnp.dtype(cfg.dtype)
    r = cfg.lora_rank if lora else 0
    self.lora_a = (LoRAParam(_normal(rngs, (in_dim, r), cfg.param_dtype, std=1.0 / r),
                             logical_axes=(axes[0], None)) if r else None)
    self.lora_b = (LoRAParam(jnp.zeros((r, out_dim), cfg.param_dtype),
                             logical_axes=(None, axes[1])) if r else None)
    self.lora_scale = cfg.lora_alpha / r if r else 0.0

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    y = jnp.dot(x, self.kernel[...].astype(self.dtype))
    if self.lora_a is not None:
      low = jnp.dot(x, self.lora_a[...].astype(self.dtype))
      y = y + self.lora_scale * jnp.dot(low, self.lora_b[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """RMSNorm with fp32 statistics; output in the input dtype (as transformers)."""

  def __init__(self, dim: int, cfg: ModelConfig):
    self.scale = nnx.Param(jnp.ones((dim,), cfg.param_dtype), logical_axes=("norm",))
    self.eps = cfg.rms_norm_eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * x32.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE and an optional KV-cache slot."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qkv = dict(use_bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
    lora = lambda name: name in cfg.lora_targets  # pylint: disable=unnecessary-lambda-assignment
    self.q_proj = Linear(d, n * h, ("embed", "q_heads"), lora=lora("q_proj"), **qkv)
    self.k_proj = Linear(d, k * h, ("embed", "kv_heads"), lora=lora("k_proj"), **qkv)
    self.v_proj = Linear(d, k * h, ("embed", "kv_heads"), lora=lora("v_proj"), **qkv)
    self.o_proj = Linear(n * h, d, ("q_heads", "embed"), use_bias=cfg.o_bias, cfg=cfg, rngs=rngs,
                         lora=lora("o_proj"))
    self.num_heads, self.num_kv_heads, self.head_dim = n, k, h

  def __call__(self, x_BxTxD, sin_BxTxH, cos_BxTxH, mask_BxTxS, kv=None, index=None):
    b, t, _ = x_BxTxD.shape
    n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
    q_BxTxNxH = apply_rope(self.q_proj(x_BxTxD).reshape(b, t, n, h), sin_BxTxH, cos_BxTxH)
    k_BxTxKxH = apply_rope(self.k_proj(x_BxTxD).reshape(b, t, k, h), sin_BxTxH, cos_BxTxH)
    v_BxTxKxH = self.v_proj(x_BxTxD).reshape(b, t, k, h)
    if kv is not None:  # write this chunk into the cache at `index`, attend over all slots
      k_cache, v_cache = kv
      k_BxSxKxH = jax.lax.dynamic_update_slice(
          k_cache, k_BxTxKxH.astype(k_cache.dtype), (0, index, 0, 0))
      v_BxSxKxH = jax.lax.dynamic_update_slice(
          v_cache, v_BxTxKxH.astype(v_cache.dtype), (0, index, 0, 0))
      kv = (k_BxSxKxH, v_BxSxKxH)
    else:
      k_BxSxKxH, v_BxSxKxH = k_BxTxKxH, v_BxTxKxH
    dtype = q_BxTxNxH.dtype
    q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k, n // k, h)
    scores_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH.astype(dtype),
                                  preferred_element_type=jnp.float32) * (h ** -0.5)
    big_neg = jnp.finfo(jnp.float32).min
    scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, big_neg)
    probs = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dtype)
    out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH.astype(dtype))
    return self.o_proj(out_BxTxKxGxH.reshape(b, t, n * h)), kv


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    mlp = dict(use_bias=False, cfg=cfg, rngs=rngs)
    self.gate_proj = Linear(d, f, ("embed", "mlp"), lora="gate_proj" in cfg.lora_targets, **mlp)
    self.up_proj = Linear(d, f, ("embed", "mlp"), lora="up_proj" in cfg.lora_targets, **mlp)
    self.down_proj = Linear(f, d, ("mlp", "embed"), lora="down_proj" in cfg.lora_targets, **mlp)

  def __call__(self, x_BxTxD):
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BxTxD)) * self.up_proj(x_BxTxD))


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.input_norm = RMSNorm(cfg.hidden_size, cfg)
    self.attn = Attention(cfg, rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BxTxD, sin_BxTxH, cos_BxTxH, mask_BxTxS, kv=None, index=None):
    attn_out, kv = self.attn(self.input_norm(x_BxTxD), sin_BxTxH, cos_BxTxH, mask_BxTxS, kv, index)
    x_BxTxD = x_BxTxD + attn_out
    x_BxTxD = x_BxTxD + self.mlp(self.post_attn_norm(x_BxTxD))
    return shard(x_BxTxD, ("batch", "length", "act_embed")), kv


def _block_forward(block, *args):
  return block(*args)


def _remat_block_forward(block, *args):
  """The block under jax.checkpoint (its activations are recomputed in the backward pass), as a
  pure function of the block's state so it composes with any outer jax.jit / grad trace."""
  graphdef, state = nnx.split(block)
  return jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


class Decoder(nnx.Module):
  """The language model: embed -> blocks -> final norm -> lm_head (tied or untied)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Param(_normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.param_dtype),
                           logical_axes=("vocab", "embed"))
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg)
    self.lm_head = (None if cfg.tie_word_embeddings else
                    Linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), use_bias=False,
                           cfg=cfg, rngs=rngs))
    # LoRA on token rows: deltas [count, D] added to those rows of the embedding (and of the
    # untied head), zero at init, so the adapted model starts equal to the base one.
    count = cfg.lora_token_rows[1] if cfg.lora_rank else 0
    delta = lambda: LoRAParam(jnp.zeros((count, cfg.hidden_size), cfg.param_dtype),  # pylint: disable=unnecessary-lambda-assignment
                              logical_axes=(None, "embed"))
    self.token_delta = delta() if count else None
    self.head_token_delta = delta() if count and self.lm_head is not None else None
    # Hybrid item embeddings: item_table [count, item_dim] (set by the caller, never trained)
    # and its projection item_in [item_dim, D] -> GELU -> item_out [D, D].
    items = cfg.item_rows[1]
    self.item_table = (FrozenParam(jnp.zeros((items, cfg.item_dim), cfg.param_dtype),
                                   logical_axes=(None, None)) if items else None)
    self.item_in = (Linear(cfg.item_dim, cfg.hidden_size, (None, "embed"), use_bias=True,
                           cfg=cfg, rngs=rngs) if items else None)
    self.item_out = (Linear(cfg.hidden_size, cfg.hidden_size, ("embed", None), use_bias=True,
                            cfg=cfg, rngs=rngs) if items else None)

  def item_embeddings(self, items: jax.Array | None = None) -> jax.Array:
    """The projected item embeddings [count, D] (fp32) that hybrid item embeddings add to the
    input rows of `cfg.item_rows`; with `items` (any shape [...] of item indices), those
    items' rows only [..., D]."""
    table = self.item_table[...].astype(jnp.float32)
    if items is not None:
      table = jnp.take(table, items, axis=0)
    return self.item_out(jax.nn.gelu(self.item_in(table))).astype(jnp.float32)

  def embed_tokens(self, tokens_BxT: jax.Array) -> jax.Array:
    """Input embeddings [B, T, D] in the compute dtype: the embedding's rows, plus the projected
    item embedding on the tokens of `cfg.item_rows` (hybrid item embeddings). The projection
    runs over whichever is smaller: the whole item table (then gathered), or the B * T tokens'
    rows (a decode step projects B rows, not the catalogue)."""
    dtype = jnp.dtype(self.cfg.dtype)
    x_BxTxD = jnp.take(self.embedding(), tokens_BxT, axis=0).astype(dtype)
    if self.item_table is None:
      return x_BxTxD
    first, count = self.cfg.item_rows
    item_BxT = tokens_BxT - first
    is_item_BxT = (item_BxT >= 0) & (item_BxT < count)
    index_BxT = jnp.clip(item_BxT, 0, count - 1)
    if tokens_BxT.size < count:
      added_BxTxD = self.item_embeddings(index_BxT)
    else:
      added_BxTxD = jnp.take(self.item_embeddings(), index_BxT, axis=0)
    return x_BxTxD + jnp.where(is_item_BxT[..., None], added_BxTxD, 0.0).astype(dtype)

  def embedding(self) -> jax.Array:
    """The input embedding [V, D] in its storage dtype, with the LoRA token-row deltas."""
    if self.token_delta is None:
      return self.embed[...]
    first, count = self.cfg.lora_token_rows
    return self.embed[...].at[first:first + count].add(self.token_delta[...])

  def hidden_states(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                    mask_BxTxS: jax.Array, cache: KVCache | None = None
                    ) -> tuple[jax.Array, KVCache | None]:
    """Final-norm hidden states [B, T, D] in the compute dtype, and the updated cache.

    Without a cache S = T. With one, the T tokens are written at slots
    ``cache.index .. cache.index + T - 1`` and S = cache.length; the mask must then cover all
    cache slots (valid earlier keys plus causal order within the chunk).
    """
    cfg = self.cfg
    x_BxTxD = shard(self.embed_tokens(tokens_BxT), ("batch", "length", "act_embed"))
    sin_BxTxH, cos_BxTxH = rope_sin_cos(cfg, positions_BxT)
    forward = _remat_block_forward if cfg.remat else _block_forward
    new_k, new_v = [], []
    for i, block in enumerate(self.layers):
      kv = None if cache is None else (cache.k[i], cache.v[i])
      index = None if cache is None else cache.index
      x_BxTxD, kv = forward(block, x_BxTxD, sin_BxTxH, cos_BxTxH, mask_BxTxS, kv, index)
      if cache is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    if cache is not None:
      cache = KVCache(k=tuple(new_k), v=tuple(new_v),
                      index=cache.index + tokens_BxT.shape[1])
    return self.final_norm(x_BxTxD), cache

  def head_weight(self) -> jax.Array:
    """The LM head as a [D, V] matrix in the compute dtype (the embedding when tied)."""
    dtype = jnp.dtype(self.cfg.dtype)
    if self.lm_head is None:
      return self.embedding().astype(dtype).T
    kernel_DxV = self.lm_head.kernel[...]
    if self.head_token_delta is not None:
      first, count = self.cfg.lora_token_rows
      kernel_DxV = kernel_DxV.at[:, first:first + count].add(self.head_token_delta[...].T)
    return kernel_DxV.astype(dtype)

  def logits(self, h_BxTxD: jax.Array) -> jax.Array:
    """Vocabulary logits [B, T, V] in fp32 (matmul in the compute dtype, as transformers)."""
    logits = jnp.dot(h_BxTxD, self.head_weight())
    return shard(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

  def __call__(self, tokens_BxT, positions_BxT, mask_BxTxS, cache=None):
    """Logits [B, T, V] (fp32) and the updated cache (None without one)."""
    h_BxTxD, cache = self.hidden_states(tokens_BxT, positions_BxT, mask_BxTxS, cache)
    return self.logits(h_BxTxD), cache


def init_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
  """A randomly initialised model (normal(0.02) weights, unit norms, zero biases)."""
  return Decoder(cfg, rngs=nnx.Rngs(params=seed))


def init_copy_heads(model: Decoder, layers: Sequence[int], gain: float = 1.0,
                    seed: int = 0) -> Decoder:
  """Copy-head initialisation of the attention value/output maps of `layers` (in place).

  A mimetic initialisation (Trockman & Kolter, 2023, "Mimetic initialization of self-attention
  layers"; the value-output half, with the positive sign that later layers of pretrained language
  models show): W_V [D, K*H] = sqrt(gain) * A and W_O [N*H, D] so that the layer's value->output
  map summed over its heads is W_V W_O = gain * A A^T, where A [D, K*H] is a random (seeded)
  orthonormal frame: gain * identity when K*H >= D, else gain times the projection onto a random
  K*H-dimensional subspace. With tied embeddings, a head that attends to a token then adds that
  token's (normalised) embedding to the residual, i.e. raises its logit: the layer can copy from
  the prompt from step 0 and training only has to learn where to attend. Queries, keys and the MLP
  keep their random init. `layers` may be negative (-1 = last layer).
  """
  cfg = model.cfg
  d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  if gain <= 0:
    raise ValueError(f"init_copy_heads: gain={gain} must be positive")
  picked = []
  for layer in layers:
    if not -cfg.num_layers <= layer < cfg.num_layers:
      raise ValueError(f"init_copy_heads: layer {layer} is out of range for a "
                       f"{cfg.num_layers}-layer model")
    picked.append(layer % cfg.num_layers)
  rng = np.random.default_rng(seed)
  for layer in sorted(set(picked)):
    gauss = rng.standard_normal((max(d, k * h), min(d, k * h)))
    frame, _ = np.linalg.qr(gauss)  # orthonormal columns
    a_DxKH = frame if d >= k * h else frame.T  # A^T A = I (K*H <= D) or A A^T = I (K*H >= D)
    heads_per_kv = n // k
    # Query head j reads KV head j // heads_per_kv; each of a KV head's g query heads writes
    # 1/g of the copy, so the heads' sum is gain * A A^T.
    o_NHxD = np.concatenate([a_DxKH[:, (j // heads_per_kv) * h:(j // heads_per_kv + 1) * h].T
                             for j in range(n)], axis=0) / heads_per_kv
    attn = model.layers[layer].attn
    dtype = attn.v_proj.kernel[...].dtype
    attn.v_proj.kernel[...] = jnp.asarray(np.sqrt(gain) * a_DxKH, jnp.float32).astype(dtype)
    attn.o_proj.kernel[...] = jnp.asarray(np.sqrt(gain) * o_NHxD, jnp.float32).astype(dtype)
  return model


def abstract_model(cfg: ModelConfig) -> Decoder:
  """A model whose parameters are ShapeDtypeStructs: the structure, no memory."""
  return nnx.eval_shape(lambda: init_model(cfg))


def add_lora(model: Decoder, rank: int, alpha: float = 16.0,
             targets: tuple[str, ...] | None = None, seed: int = 0,
             token_rows: tuple[int, int] = (0, 0)) -> Decoder:
  """A copy of `model` with fresh LoRA adapters (B = 0 and token-row deltas 0: the same function
  as `model`); `token_rows` (first, count) are vocabulary rows that train with them."""
  cfg = model.cfg.replace(lora_rank=rank, lora_alpha=alpha, lora_token_rows=tuple(token_rows),
                          **({"lora_targets": tuple(targets)} if targets else {}))
  return _copy_shared(model, init_model(cfg, seed))


def _copy_shared(source: Decoder, target: Decoder) -> Decoder:
  """`target` with every parameter it shares (by path) with `source` set to the source's."""
  shared = dict(nnx.state(source, nnx.Param).flat_state())
  for k, v in nnx.state(target, nnx.Param).flat_state():
    if k in shared:
      v.set_value(shared[k].get_value())
  return target


def add_item_embeddings(model: Decoder, table: np.ndarray, first: int, seed: int = 0) -> Decoder:
  """A copy of `model` with hybrid item embeddings: the frozen `table` [count, item_dim] (item i's
  embedding) for the vocabulary rows first .. first + count - 1, and a fresh projection."""
  table = np.asarray(table)
  cfg = model.cfg.replace(item_rows=(first, table.shape[0]), item_dim=table.shape[1])
  hybrid = _copy_shared(model, init_model(cfg, seed))
  hybrid.item_table.set_value(jnp.asarray(table, cfg.param_dtype))
  return hybrid


def merged_config(cfg: ModelConfig) -> ModelConfig:
  """The config of `merge_lora`'s result: no adapters, float32 parameters (unchanged without LoRA)."""
  return (cfg.replace(lora_rank=0, lora_token_rows=(0, 0), param_dtype="float32")
          if cfg.lora_rank else cfg)


def merge_lora(model: Decoder) -> Decoder:
  """A plain model (no adapters) whose kernels are W + scale * A @ B and whose token rows hold
  their deltas: what eval, the reference and export use.

  The sum is kept in float32 (the merged model's param_dtype is float32 whatever the adapted
  model's): in bfloat16, W + delta rounds most small LoRA updates away (for W ~ N(0, 0.02) and
  a delta of std 1e-4, about a third of the elements), and the merged model would not be the
  trained one. An export in a narrower dtype rounds only there (`config.export.dtype`).
  """
  cfg = model.cfg
  if not cfg.lora_rank:
    return model
  flat = _flat_params(model)
  first, count = cfg.lora_token_rows

  def merged(path):
    value = flat[path]
    if path[-1] == "kernel" and path[:-1] + ("lora_a",) in flat:
      a, b = flat[path[:-1] + ("lora_a",)], flat[path[:-1] + ("lora_b",)]
      value = value + (cfg.lora_alpha / cfg.lora_rank) * (a @ b)
    if path == ("embed",) and count:
      value = value.at[first:first + count].add(flat[("token_delta",)])
    if path == ("lm_head", "kernel") and ("head_token_delta",) in flat:
      value = value.at[:, first:first + count].add(flat[("head_token_delta",)].T)
    return value

  return _built_from(merged_config(cfg), merged)


def fold_item_embeddings(model: Decoder) -> Decoder:
  """A plain model (no item table or projection) that computes what `model` computes: the
  projected item embeddings are added to their input rows (in float32, the result's param_dtype).
  With a tied head the result is untied, its head keeping the rows as they were (hybrid item
  embeddings change only the input). Unchanged without hybrid item embeddings; what the Hugging
  Face export writes."""
  cfg = model.cfg
  if not cfg.item_rows[1]:
    return model
  first, count = cfg.item_rows
  flat = _flat_params(untie_head(model))
  flat[("embed",)] = flat[("embed",)].at[first:first + count].add(model.item_embeddings())
  return _built_from(cfg.replace(item_rows=(0, 0), item_dim=0, param_dtype="float32",
                                 tie_word_embeddings=False), flat.__getitem__)


def untie_head(model: Decoder) -> Decoder:
  """The same function with an untied head (float32 parameters) whose kernel is the tied
  embedding's rows, transposed; `model` itself when its head is untied. Input and output rows
  can then differ: what a PEFT base needs when hybrid item embeddings change the title tokens'
  input rows only (`checkpoints.peft`)."""
  cfg = model.cfg
  if not cfg.tie_word_embeddings:
    return model
  if cfg.lora_rank:
    raise ValueError("untie_head: merge the LoRA adapters first (model.merge_lora)")
  flat = _flat_params(model)
  flat[("lm_head", "kernel")] = flat[("embed",)].T
  return _built_from(cfg.replace(param_dtype="float32", tie_word_embeddings=False),
                     flat.__getitem__)


def _flat_params(model: Decoder) -> dict[tuple, jax.Array]:
  """Every parameter of `model` by its path, in float32."""
  return {path: var.get_value().astype(jnp.float32)
          for path, var in nnx.state(model, nnx.Param).flat_state()}


def _built_from(cfg: ModelConfig, value_of) -> Decoder:
  """A model of `cfg` whose parameter at each path is `value_of(path)` (no initialisation)."""
  template = abstract_model(cfg)
  values = [(path, var.replace(value_of(path)))
            for path, var in nnx.state(template, nnx.Param).flat_state()]
  graphdef, _ = nnx.split(template)
  return nnx.merge(graphdef, nnx.State.from_flat_path(values))
