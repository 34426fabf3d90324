"""Orbax checkpoints of model parameters, restored straight into target shardings.

Layout of a model directory written here::

    DIR/model_config.json   ModelConfig fields (see model.config_to_dict)
    DIR/params/             orbax StandardCheckpointer tree of the nnx.Param state
    DIR/tokenizer.json ...  tokenizer files, when a tokenizer was given
"""

from __future__ import annotations

import json

from flax import nnx
import jax
import orbax.checkpoint as ocp

from rosepo_jax import files, multihost, sharding
from rosepo_jax.checkpoints.atomic import atomic_dir
from rosepo_jax.checkpoints.errors import CheckpointNotFoundError
from rosepo_jax.checkpoints.hf import save_tokenizer
from rosepo_jax.model import Decoder, abstract_model, config_from_dict, config_to_dict

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def is_orbax_model_dir(path: str) -> bool:
  return files.isfile(files.join(path, CONFIG_FILE)) and files.isdir(
      files.join(path, PARAMS_DIR))


def save_orbax(model: Decoder, folder: str, tokenizer=None, overwrite: bool = True,
               protect=()) -> dict:
  """Writes `model` (any sharding) as an orbax model directory, atomically; `overwrite` and
  `protect`: which existing folder may be replaced (`atomic.check_destination`). Collective in a
  multi-process job: every process writes its shards; the leader writes the other files."""
  state = nnx.state(model, nnx.Param).to_pure_dict()
  tokenizer_files = []
  with atomic_dir(folder, overwrite, protect) as tmp:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(files.native(files.join(tmp, PARAMS_DIR)), state)
    checkpointer.wait_until_finished()
    if multihost.is_leader():
      files.write_text(files.join(tmp, CONFIG_FILE),
                       json.dumps(config_to_dict(model.cfg), indent=2))
      tokenizer_files = save_tokenizer(tokenizer, tmp)
  return {"format": "orbax", "path": folder, "params": model.cfg.num_params,
          "dtype": model.cfg.param_dtype, "tokenizer_files": tokenizer_files}


def load_orbax(folder: str, mesh=None, rules=sharding.RULES, **overrides) -> Decoder:
  """Restores an orbax model directory; each parameter lands directly in its mesh sharding
  (without a mesh: on this process's first device). Collective in a multi-process job."""
  if not is_orbax_model_dir(folder):
    raise CheckpointNotFoundError(f"{folder}: not an orbax model directory; expected {CONFIG_FILE} "
                            f"and {PARAMS_DIR}/")
  cfg = config_from_dict(json.loads(files.read_text(files.join(folder, CONFIG_FILE))),
                         source=files.join(folder, CONFIG_FILE))
  cfg = cfg.replace(**overrides)
  graphdef, abstract = nnx.split(abstract_model(cfg))
  params = nnx.state(abstract_model(cfg), nnx.Param)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, params)
  else:
    shardings = sharding.state_shardings(params, mesh, rules)
  target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        params.to_pure_dict(), shardings.to_pure_dict())
  restored = ocp.StandardCheckpointer().restore(
      files.native(files.join(folder, PARAMS_DIR)), target)
  nnx.replace_by_pure_dict(abstract, restored)
  return nnx.merge(graphdef, abstract)
