"""Hugging Face folders: config.json <-> ModelConfig, safetensors import and export.

Import reads config.json in the transformers 4 form (``rope_theta``/``rope_scaling``) or the 5 form
(``rope_parameters``) and single or sharded (``model.safetensors.index.json``) safetensors in
fp32/bf16/fp16. Export writes config.json (readable by transformers 4 and 5), generation_config.json,
model.safetensors (sharded with an index above `max_shard_bytes`) and the tokenizer files, atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from rosepo_jax import files, multihost, progress
from rosepo_jax.checkpoints import params as P
from rosepo_jax.checkpoints.errors import CheckpointError, CheckpointNotFoundError
from rosepo_jax.checkpoints.atomic import atomic_dir
from rosepo_jax.model import Decoder, ModelConfig, RopeScaling, fold_item_embeddings

SUPPORTED_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
                   "added_tokens.json")
SAFETENSORS_DTYPES = {"float32": np.float32, "float16": np.float16}


class UnsupportedConfigError(CheckpointError):
  """A config field that this model does not implement (error text names the field)."""


def _rope_fields(hf: dict, source: str) -> tuple[float, RopeScaling | None]:
  """rope_theta and scaling from either config form; errors on rope types we do not implement."""
  params = hf.get("rope_parameters") or {}
  legacy = hf.get("rope_scaling") or {}
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  scaling = params if params.get("rope_type", "default") != "default" else legacy
  rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
  if rope_type == "default":
    return float(theta), None
  if rope_type != "llama3":
    field = "rope_parameters.rope_type" if params else "rope_scaling.rope_type"
    raise UnsupportedConfigError(f"{source}: {field}={rope_type!r} is not supported "
                                 "(supported: default, llama3)")
  return float(theta), RopeScaling(
      factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
      high_freq_factor=float(scaling["high_freq_factor"]),
      original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))


def _as_tuple(x) -> tuple[int, ...]:
  if x is None:
    return ()
  return tuple(int(i) for i in x) if isinstance(x, (list, tuple)) else (int(x),)


def config_from_hf(hf: dict, source: str = "config.json", **overrides: Any) -> ModelConfig:
  """ModelConfig from a transformers config dict; `overrides` set dtypes, remat, etc."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise UnsupportedConfigError(f"{source}: model_type={model_type!r} is not supported "
                                 f"(supported: {sorted(SUPPORTED_MODEL_TYPES)})")
  checks = [
      ("hidden_act", hf.get("hidden_act", "silu") != "silu", "only silu"),
      ("mlp_bias", bool(hf.get("mlp_bias", False)), "MLP biases are not implemented"),
      ("use_sliding_window", bool(hf.get("use_sliding_window", False)),
       "sliding-window attention is not implemented"),
      ("layer_types", any(t != "full_attention" for t in hf.get("layer_types") or []),
       "only full_attention layers are implemented"),
      ("num_experts", bool(hf.get("num_experts") or hf.get("num_local_experts")),
       "mixture-of-experts is not implemented"),
      ("quantization_config",
       (hf.get("quantization_config") or {}).get("quant_method", "gguf") != "gguf",
       "quantised safetensors are not supported; give an unquantised checkpoint"),
  ]
  for field, bad, why in checks:
    if bad:
      raise UnsupportedConfigError(f"{source}: unsupported field {field}={hf.get(field)!r}: {why}")
  try:
    theta, scaling = _rope_fields(hf, source)
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    attention_bias = bool(hf.get("attention_bias", False))
    cfg = ModelConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads), rope_theta=theta,
        rope_scaling=scaling, rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type == "llama" and attention_bias,
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        architecture=model_type, bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_as_tuple(hf.get("eos_token_id")), pad_token_id=hf.get("pad_token_id"))
  except KeyError as e:
    raise CheckpointError(f"{source}: required field {e.args[0]!r} is missing") from None
  return cfg.replace(**overrides)


def config_to_hf(cfg: ModelConfig, torch_dtype: str) -> dict:
  """A config.json dict that transformers 4.x and 5.x both load (legacy rope fields)."""
  if cfg.qkv_bias != cfg.o_bias and cfg.architecture == "llama":
    raise ValueError("llama export needs qkv_bias == o_bias (HF attention_bias covers both)")
  if cfg.architecture == "qwen2" and (not cfg.qkv_bias or cfg.o_bias):
    raise ValueError("qwen2 export needs qkv_bias=True and o_bias=False")
  eos = list(cfg.eos_token_ids)
  hf = {
      "architectures": [SUPPORTED_MODEL_TYPES[cfg.architecture]],
      "model_type": cfg.architecture,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
      "pad_token_id": cfg.pad_token_id,
      "torch_dtype": torch_dtype,
      "use_cache": True,
  }
  if cfg.rope_scaling is not None:
    s = cfg.rope_scaling
    hf["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor,
                          "low_freq_factor": s.low_freq_factor,
                          "high_freq_factor": s.high_freq_factor,
                          "original_max_position_embeddings": s.original_max_position_embeddings}
  if cfg.architecture == "llama":
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
  else:
    hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  return hf


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _weight_files(folder: str) -> dict[str, str]:
  """tensor name -> safetensors file path, from the index or the single file."""
  index = os.path.join(folder, "model.safetensors.index.json")
  single = os.path.join(folder, "model.safetensors")
  if os.path.exists(index):
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index}: field 'weight_map' missing or not an object")
    files = {os.path.join(folder, f) for f in weight_map.values()}
    absent = sorted(f for f in files if not os.path.exists(f))
    if absent:
      raise CheckpointNotFoundError(f"{index} names shard files that do not exist: {absent}")
    return {name: os.path.join(folder, f) for name, f in weight_map.items()}
  if os.path.exists(single):
    with _open_safetensors(single) as f:
      return {name: single for name in f.keys()}
  raise CheckpointNotFoundError(f"{folder}: no weights found; expected model.safetensors or "
                          "model.safetensors.index.json with its shards")


class CheckpointFileError(CheckpointError):
  """A weights file that cannot be read (truncated or not safetensors), named by its path."""


def _open_safetensors(path: str):
  try:
    return safe_open(path, framework="numpy")
  except Exception as e:  # pylint: disable=broad-except  (safetensors' SafetensorError)
    raise CheckpointFileError(f"{path}: not a complete safetensors file ({e}); re-download or "
                              "re-export it") from None


def load_hf(folder: str, mesh=None, **overrides: Any) -> Decoder:
  """Imports a Hugging Face llama/qwen2 folder into our model.

  `overrides` are ModelConfig fields (e.g. ``param_dtype="bfloat16"``, ``remat=True``);
  parameters default to float32 whatever the file's dtype.
  """
  if files.is_remote(folder):  # safetensors reads local files
    with files.local_copy(folder) as local:
      return load_hf(local, mesh, **overrides)
  config_path = os.path.join(folder, "config.json")
  if not os.path.isdir(folder) or not os.path.exists(config_path):
    raise CheckpointNotFoundError(f"{folder}: not a Hugging Face model folder; expected config.json "
                            "and model.safetensors (or model.safetensors.index.json + shards)")
  cfg = config_from_hf(_read_json(config_path), config_path, **overrides)
  weight_files = _weight_files(folder)
  names = P.param_names(cfg)
  missing = [n.hf for n in names if n.hf not in weight_files]
  if missing:
    raise P.missing_error(folder, missing, list(weight_files))
  handles: dict[str, Any] = {}
  try:
    def get(name: P.ParamName) -> np.ndarray:
      path = weight_files[name.hf]
      if path not in handles:
        handles[path] = _open_safetensors(path).__enter__()
      return P.from_theirs(name, handles[path].get_tensor(name.hf))

    return P.model_from_tensors(cfg, get, folder, mesh)
  finally:
    for h in handles.values():
      h.__exit__(None, None, None)


def save_tokenizer(tokenizer, folder: str) -> list[str]:
  """Writes tokenizer files from a folder path or an object with ``save_pretrained``."""
  if tokenizer is None:
    return []
  if isinstance(tokenizer, (str, os.PathLike)):
    tokenizer = os.fspath(tokenizer)
    copied = [f for f in TOKENIZER_FILES if files.exists(files.join(tokenizer, f))]
    if not copied:
      raise CheckpointNotFoundError(f"{tokenizer}: no tokenizer files found; expected one of "
                              f"{list(TOKENIZER_FILES)}")
    for f in copied:
      files.copy(files.join(tokenizer, f), files.join(folder, f))
    return copied
  with tempfile.TemporaryDirectory(prefix="rosepo_jax.") as local:  # it writes local files
    tokenizer.save_pretrained(local)
    written = sorted(os.listdir(local))
    for name in written:
      files.copy(os.path.join(local, name), files.join(folder, name))
  return written


def save_hf(model: Decoder, folder: str, tokenizer=None, dtype: str | None = None,
            max_shard_bytes: int = 4 << 30, overwrite: bool = True, protect=()) -> dict:
  """Exports `model` to a Hugging Face folder, atomically. Returns a summary dict.

  `dtype` is the saved dtype (default: the parameters' dtype); `tokenizer` is a folder with
  tokenizer files or an object with ``save_pretrained`` (e.g. a PreTrainedTokenizerFast).
  `overwrite` and `protect`: which existing folder may be replaced (`atomic.check_destination`).
  The summary's "rounding" measures what a narrower `dtype` changes: the largest absolute error,
  the largest error relative to its tensor's largest magnitude, and the fraction of elements
  changed (all 0 when nothing is cast). Hybrid item embeddings are folded into the embedding
  rows first (`model.fold_item_embeddings`). Collective in a multi-process job: every process
  gathers the weights, the leader writes.
  """
  model = fold_item_embeddings(model)
  cfg = model.cfg
  dtype = dtype or cfg.param_dtype
  if dtype == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    np_dtype = ml_dtypes.bfloat16
  elif dtype in SAFETENSORS_DTYPES:
    np_dtype = SAFETENSORS_DTYPES[dtype]
  else:
    raise ValueError(f"save_hf: dtype={dtype!r}; expected float32, bfloat16 or float16")
  shards: list[dict[str, np.ndarray]] = [{}]  # gathered on every process, written by the leader
  shard_bytes, total = 0, 0
  rounding = {"max_abs_error": 0.0, "max_relative_error": 0.0, "elements_changed": 0.0}
  elements = 0
  for name, array in P.iter_tensors(model):
    tensor = P.to_theirs(name, array).astype(np_dtype)
    if tensor.dtype != array.dtype:  # what the export dtype rounds away
      err = np.abs(tensor.astype(np.float64) - P.to_theirs(name, array).astype(np.float64))
      scale = float(np.abs(array).max())
      rounding["max_abs_error"] = max(rounding["max_abs_error"], float(err.max()))
      rounding["max_relative_error"] = max(rounding["max_relative_error"],
                                           float(err.max()) / scale if scale else 0.0)
      rounding["elements_changed"] += float((err > 0).sum())
    elements += array.size
    if shards[-1] and shard_bytes + tensor.nbytes > max_shard_bytes:
      shards.append({})
      shard_bytes = 0
    shards[-1][name.hf] = tensor
    shard_bytes += tensor.nbytes
    total += tensor.nbytes
  tokenizer_files = []
  with atomic_dir(folder, overwrite, protect) as tmp:
    if multihost.is_leader():
      tokenizer_files = _write_hf(tmp, shards, cfg, dtype, tokenizer, total,
                                  os.path.basename(folder.rstrip("/")))
  rounding["elements_changed"] /= max(elements, 1)
  return {"format": "hf", "path": folder, "tensors": len(P.param_names(cfg)),
          "params": cfg.num_params, "dtype": dtype, "shards": len(shards), "bytes": total,
          "tokenizer_files": tokenizer_files, "rounding": rounding}


def _write_hf(tmp: str, shards: list[dict[str, np.ndarray]], cfg, dtype: str, tokenizer,
              total: int, what: str) -> list[str]:
  """Writes the safetensors shards, config.json, generation_config.json and the tokenizer files
  into `tmp`; returns the tokenizer files written."""
  metadata = {"format": "pt"}
  bar = progress.bar(total, f"export {what}", "B", unit_scale=True)
  if len(shards) == 1:
    save_safetensors(shards[0], files.join(tmp, "model.safetensors"), metadata)
    bar.update(total)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_safetensors(shard, files.join(tmp, fname), metadata)
      weight_map.update({k: fname for k in shard})
      bar.update(sum(t.nbytes for t in shard.values()))
    files.write_text(files.join(tmp, "model.safetensors.index.json"), json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  bar.close()
  files.write_text(files.join(tmp, "config.json"), json.dumps(config_to_hf(cfg, dtype), indent=2))
  gen = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
         "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else
         (cfg.eos_token_ids[0] if cfg.eos_token_ids else None)}
  files.write_text(files.join(tmp, "generation_config.json"), json.dumps(gen, indent=2))
  return save_tokenizer(tokenizer, tmp)


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict) -> None:
  """Writes a safetensors file at `path` (local or gs://), atomically."""
  with files.local_output(path) as local:  # safetensors writes local files
    save_file(tensors, local, metadata=metadata)
