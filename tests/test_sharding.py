"""Sharding on 8 fake CPU devices: rules, placement, sharded forward == single-device forward."""

from conftest import assert_close
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as PS

from rosepo_jax import checkpoints as C
from rosepo_jax import model as M
from rosepo_jax import sharding as S


def test_eight_fake_devices():
  assert jax.device_count() == 8, "conftest must set --xla_force_host_platform_device_count=8"


def test_rules_map_logical_axes_and_drop_non_dividing_axes():
  mesh = S.make_mesh(fsdp=2, tensor=4)
  assert S.logical_to_spec(("embed", "mlp")) == PS("fsdp", "tensor")
  assert S.logical_to_spec(("batch", "length", "act_embed")) == PS(("data", "fsdp"), None, None)
  assert S.logical_to_spec(("embed", "kv_heads"), (64, 32), mesh) == PS("fsdp", "tensor")
  assert S.logical_to_spec(("embed", "kv_heads"), (64, 2), mesh) == PS("fsdp", None)
  assert S.logical_to_spec(("norm",), (64,), mesh) == PS(None)
  assert S.logical_to_spec(("vocab", "vocab"), (8, 8), mesh) == PS("tensor", None)  # axis once


def test_make_mesh_sizes_and_errors():
  assert dict(S.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert dict(S.make_mesh(data=2, fsdp=-1, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="3 devices"):
    S.make_mesh(data=3, devices=jax.devices()[:3], fsdp=2)
  with pytest.raises(ValueError, match="not divisible"):
    S.make_mesh(data=-1, fsdp=3)


def test_shard_is_identity_without_mesh():
  x = jnp.ones((4, 3))
  assert S.shard(x, ("batch", None)) is x
  m = M.init_model(M.get_config("tiny"))
  assert S.shard_module(m, None) is m


def _forward_fn(graphdef):
  @jax.jit
  def forward(state, tokens, valid):
    model = nnx.merge(graphdef, state)
    logits, _ = model(tokens, M.positions_from_mask(valid), M.causal_mask(valid))
    return logits
  return forward


@pytest.mark.parametrize("mesh_shape", [dict(fsdp=2, tensor=4), dict(data=8)])
def test_sharded_forward_equals_single_device(mesh_shape):
  cfg = M.get_config("tiny")
  rs = np.random.RandomState(0)
  tokens = rs.randint(3, 256, (8, 10)).astype(np.int32)
  valid = np.ones((8, 10), bool)
  valid[0, :3] = False
  graphdef, state = nnx.split(M.init_model(cfg, seed=2))
  ref = _forward_fn(graphdef)(state, jnp.asarray(tokens), jnp.asarray(valid))

  mesh = S.make_mesh(**{"data": 1, **mesh_shape})
  model = S.shard_module(M.init_model(cfg, seed=2), mesh)
  q = model.layers[0].attn.q_proj.kernel[...]
  if mesh_shape.get("tensor"):
    assert q.sharding.spec == PS("fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (32, 16)  # (64/2, 64/4)
    assert model.embed[...].sharding.spec == PS("tensor", "fsdp")
  else:  # pure data parallelism: parameters replicated, batch split 8 ways
    assert q.sharding.is_fully_replicated
  with S.use_mesh(mesh):
    batch = S.global_batch({"tokens": tokens, "valid": valid}, mesh)
    assert batch["tokens"].addressable_shards[0].data.shape[0] == 8 // (
        mesh.shape["data"] * mesh.shape["fsdp"])
    graphdef, state = nnx.split(model)
    out = _forward_fn(graphdef)(state, batch["tokens"], batch["valid"])
  assert_close(out, ref, where=valid)


def test_orbax_restores_into_target_shardings(tmp_path):
  model = M.init_model(M.get_config("tiny"), seed=4)
  C.save_orbax(model, str(tmp_path / "ckpt"))
  mesh = S.make_mesh(fsdp=2, tensor=4)
  restored = C.load_orbax(str(tmp_path / "ckpt"), mesh=mesh)
  kernel = restored.layers[1].mlp.down_proj.kernel[...]
  assert kernel.sharding.spec == PS("tensor", "fsdp")
  np.testing.assert_array_equal(np.asarray(kernel),
                                np.asarray(model.layers[1].mlp.down_proj.kernel[...]))
