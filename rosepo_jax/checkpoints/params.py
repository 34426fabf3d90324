"""One table naming every parameter in our model, in Hugging Face and in GGUF; flat <-> model.

Our parameter paths are tuples such as ``("layers", 3, "attn", "q_proj", "kernel")``. Linear
kernels are stored [in, out]; HF and GGUF store [out, in], hence ``transpose``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rosepo_jax import multihost, sharding
from rosepo_jax.checkpoints.errors import CheckpointError
from rosepo_jax.model import Decoder, ModelConfig, abstract_model

Path = tuple


@dataclasses.dataclass(frozen=True)
class ParamName:
  path: Path  # ours
  hf: str  # Hugging Face (transformers) tensor name
  gguf: str  # llama.cpp tensor name
  transpose: bool  # a Linear kernel: ours [in, out] vs theirs [out, in]


def param_names(cfg: ModelConfig) -> list[ParamName]:
  """Every parameter of a model with config `cfg`, in a fixed order."""
  names = [ParamName(("embed",), "model.embed_tokens.weight", "token_embd.weight", False)]
  for i in range(cfg.num_layers):
    hf, gg = f"model.layers.{i}.", f"blk.{i}."
    names.append(ParamName(("layers", i, "input_norm", "scale"), hf + "input_layernorm.weight",
                           gg + "attn_norm.weight", False))
    for ours, gguf in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"),
                       ("o_proj", "attn_output")):
      names.append(ParamName(("layers", i, "attn", ours, "kernel"), f"{hf}self_attn.{ours}.weight",
                             f"{gg}{gguf}.weight", True))
      if (cfg.qkv_bias and ours != "o_proj") or (cfg.o_bias and ours == "o_proj"):
        names.append(ParamName(("layers", i, "attn", ours, "bias"), f"{hf}self_attn.{ours}.bias",
                               f"{gg}{gguf}.bias", False))
    names.append(ParamName(("layers", i, "post_attn_norm", "scale"),
                           hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", False))
    for ours, gguf in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
      names.append(ParamName(("layers", i, "mlp", ours, "kernel"), f"{hf}mlp.{ours}.weight",
                             f"{gg}{gguf}.weight", True))
  names.append(ParamName(("final_norm", "scale"), "model.norm.weight", "output_norm.weight", False))
  if not cfg.tie_word_embeddings:
    names.append(ParamName(("lm_head", "kernel"), "lm_head.weight", "output.weight", True))
  return names


def model_from_tensors(cfg: ModelConfig, get: Callable[[ParamName], np.ndarray], source: str,
                       mesh=None, rules=sharding.RULES) -> Decoder:
  """Builds a model whose parameter `name` is ``get(name)`` (already in our [in, out] layout).

  Each tensor is checked against the config's shape, cast to ``cfg.param_dtype`` and placed on
  `mesh` by its logical axes (one device without a mesh). Only one tensor is held on the host
  at a time. Errors name `source`, the tensor, the expected and the actual shape.
  """
  graphdef, abstract = nnx.split(abstract_model(cfg))
  flat = dict(abstract.flat_state())
  expected_paths = {n.path for n in param_names(cfg)}
  if expected_paths != set(flat):
    raise AssertionError(f"param table and model disagree: {sorted(expected_paths ^ set(flat))}")
  dtype = jnp.dtype(cfg.param_dtype)
  values = {}
  for name in param_names(cfg):
    var = flat[name.path]
    want = tuple(var.get_value().shape)
    array = np.asarray(get(name))
    if array.shape != want:
      raise CheckpointError(f"{source}: tensor {name.hf!r} (ours {'.'.join(map(str, name.path))}) has "
                       f"shape {array.shape}, expected {want} from the model config")
    if mesh is None:
      placed = jax.device_put(array.astype(dtype))
    else:
      spec = sharding.logical_to_spec(var.get_metadata()["logical_axes"], want, mesh, rules)
      placed = jax.device_put(array.astype(dtype), jax.sharding.NamedSharding(mesh, spec))
    values[name.path] = placed
  state = nnx.State.from_flat_path(
      [(path, var.replace(values[path])) for path, var in abstract.flat_state()])
  return nnx.merge(graphdef, state)


def iter_tensors(model: Decoder) -> Iterator[tuple[ParamName, np.ndarray]]:
  """(name, host array in our layout) for every parameter, gathered from any sharding (from
  every process of a multi-process job, which must all iterate: `multihost.to_host`)."""
  flat = dict(nnx.state(model, nnx.Param).flat_state())
  for name in param_names(model.cfg):
    yield name, multihost.to_host(flat[name.path].get_value())


def to_theirs(name: ParamName, array: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(array.T) if name.transpose else array


def from_theirs(name: ParamName, array: np.ndarray) -> np.ndarray:
  return array.T if name.transpose else array


def missing_error(source: str, missing: list[str], available: Mapping | list) -> CheckpointError:
  shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
  return CheckpointError(f"{source}: {len(missing)} expected tensor(s) missing: {shown} "
                    f"({len(available)} tensors present)")
