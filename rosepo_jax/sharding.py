"""Device mesh, logical-axis rules and sharding helpers.

Parameters declare *logical* axes (e.g. ``("embed", "mlp")``) in their ``logical_axes`` metadata;
``RULES`` maps each logical axis to mesh axes of the ``(data, fsdp, tensor)`` mesh. Everything
here is a no-op without a mesh, so single-device and CPU-test code runs the same path as a pod.

Typical use::

    mesh = make_mesh(fsdp=2, tensor=4)
    with use_mesh(mesh):
      shard_module(model, mesh)           # parameters placed by their logical axes
      logits = jitted_forward(...)        # activations constrained with `shard`
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import math

from flax import nnx
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None = replicated). Parameter axes: vocab, embed, q_heads,
# kv_heads, mlp, norm. Activation axes: batch, length, act_embed, act_vocab.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
)

LogicalAxes = Sequence[str | None]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh with Auto axis types. One size may be -1 (= the rest)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh: {len(devices)} devices are not divisible by {known} "
                       f"(data={data} fsdp={fsdp} tensor={tensor})")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh: data*fsdp*tensor = {math.prod(sizes)} but {len(devices)} devices "
                     f"are available (data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]})")
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)


def use_mesh(mesh: Mesh | None):
  """Context manager making `mesh` current for `shard`; a null context for ``mesh=None``."""
  if mesh is None:
    return contextlib.nullcontext()
  return jax.set_mesh(mesh)


def logical_to_spec(logical_axes: LogicalAxes, shape: Sequence[int] | None = None,
                    mesh=None, rules=RULES) -> PartitionSpec:
  """Maps logical axes to a PartitionSpec by `rules`.

  With `shape` and `mesh`, a mesh axis that does not divide its dimension (e.g. 2 KV heads over
  tensor=4) is dropped for that dimension, which is then replicated: correct, never an error.
  A mesh axis is used at most once per spec (first dimension wins).
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for axis in axes:
      if axis in used or (mesh is not None and axis not in mesh.shape):
        continue
      if shape is not None and mesh is not None:
        size = math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]
        if shape[dim] % size:
          continue
      kept.append(axis)
    used.update(kept)
    spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return PartitionSpec(*spec)


def _current_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def shard(x: jax.Array, logical_axes: LogicalAxes, rules=RULES) -> jax.Array:
  """Constrains activation `x` to its logical layout; identity when no mesh is current."""
  mesh = _current_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh, rules=RULES):
  """NamedSharding for every leaf of an nnx.State, from each Variable's ``logical_axes``.

  Variables without ``logical_axes`` (RNG state, counters) are replicated.
  """

  def one(v):
    axes = v.get_metadata().get("logical_axes") if _is_variable(v) else None
    value = v.get_value() if _is_variable(v) else v
    if axes is None:
      return NamedSharding(mesh, PartitionSpec())
    if len(axes) != np.ndim(value):
      raise ValueError(f"logical_axes {axes} do not match the parameter's shape {np.shape(value)}")
    return NamedSharding(mesh, logical_to_spec(axes, np.shape(value), mesh, rules))

  return jax.tree.map(one, state, is_leaf=_is_variable)


def optimizer_state_shardings(opt_state, params, params_shardings, mesh: Mesh):
  """Shardings for an optimizer state: every subtree shaped like `params` (Adam's moments, ...)
  takes `params_shardings`; everything else (step counts, scalars) is replicated.

  Without this, jit(optimizer.init) would leave the moments wherever XLA puts constants
  (replicated), and FSDP would not shard the largest part of the training state.
  """
  params_def = jax.tree.structure(params)
  replicated = NamedSharding(mesh, PartitionSpec())
  like_params = lambda x: jax.tree.structure(x) == params_def  # pylint: disable=unnecessary-lambda-assignment
  return jax.tree.map(lambda x: params_shardings if like_params(x) else replicated, opt_state,
                      is_leaf=like_params)


def shard_module(module: nnx.Module, mesh: Mesh | None, rules=RULES) -> nnx.Module:
  """Places `module`'s state on `mesh` by its logical axes, in place; a no-op for ``mesh=None``."""
  if mesh is None:
    return module
  state = nnx.state(module)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(module, jax.device_put(state, shardings))
  return module


def batch_sharding(global_shape: Sequence[int], mesh: Mesh,
                   logical_axes: LogicalAxes = ("batch",), rules=RULES) -> NamedSharding:
  """The sharding of a global batch leaf: `logical_axes` on the leading dimension(s), the rest
  replicated. From the GLOBAL shape, so every process (and the jitted step) agrees on it."""
  axes = tuple(logical_axes) + (None,) * (len(global_shape) - len(logical_axes))
  return NamedSharding(mesh, logical_to_spec(axes, tuple(global_shape), mesh, rules))


def local_to_global_shape(local_shape: Sequence[int]) -> tuple[int, ...]:
  """This process's rows x the process count: the global batch shape of a local leaf."""
  return (local_shape[0] * jax.process_count(),) + tuple(local_shape[1:])


def global_batch(local_batch, mesh: Mesh | None, logical_axes: LogicalAxes = ("batch",),
                 rules=RULES):
  """Builds global arrays from this process's rows of a batch (a pytree of numpy arrays).

  Each leaf's leading dimension is this process's slice of the global batch; leaves are sharded
  by `logical_axes` (padded with None for the remaining dimensions). Multi-host safe. Without a
  mesh, the leaves are simply moved to the default device.
  """
  if mesh is None:
    return jax.tree.map(jax.numpy.asarray, local_batch)

  def one(x):
    x = np.asarray(x)
    global_shape = local_to_global_shape(x.shape)
    return jax.make_array_from_process_local_data(
        batch_sharding(global_shape, mesh, logical_axes, rules), x, global_shape)

  return jax.tree.map(one, local_batch)


def mesh_of(tree) -> Mesh | None:
  """The mesh the arrays of `tree` (e.g. a model's state) are placed on, or None (one device)."""
  for x in jax.tree.leaves(tree):
    if isinstance(getattr(x, "sharding", None), NamedSharding):
      return x.sharding.mesh
  return None


def shared_batch(batch, mesh: Mesh | None, logical_axes: LogicalAxes = ("batch",), rules=RULES):
  """Global arrays from a batch that every process holds in full (prompts to decode, rows to
  score), sharded like `global_batch`'s leaves, so that the work is split over the batch axes
  (data-parallel across processes) while the result stays whole. Without a mesh: unchanged."""
  if mesh is None:
    return batch

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(
        x.shape, batch_sharding(x.shape, mesh, logical_axes, rules), lambda index: x[index])

  return jax.tree.map(one, batch)
