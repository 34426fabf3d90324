"""Typed config: every shipped config parses; unknown keys, wrong types and out-of-range values
fail before any stage runs, naming the dotted key."""

import dataclasses
import os
import subprocess
import sys

from conftest import REPO
from etils.epath import backend as epath_backend
import ml_collections
import pytest

from rosepo_jax import config as config_lib
from rosepo_jax import pipeline
from test_data_pipeline import _config

CONFIGS = sorted(f for f in os.listdir(os.path.join(REPO, "configs"))
                 if f.endswith(".py") and f not in ("__init__.py", "common.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_parses(name):
  raw = _config(name)
  config = config_lib.parse(raw)
  assert config.methods and config.sft.steps > 0 and config.smoothing.eps_max < 0.5
  # Every typed key must be in the file's ConfigDict, so that a command line can override it
  # (--config.sft.keep=last, ...): the launcher locks the dict, so an absent key cannot be set.
  # Only the data keys of other datasets may be absent.
  other_data = {"data.world", "data.candidates_dir", "data.split_file", "data.eval_rows_dir"}
  assert set(_absent_keys(config_lib.Config, raw)) <= other_data, name


def _absent_keys(cls, node, prefix=""):
  """The dotted fields of the dataclass `cls` (recursively) that the ConfigDict `node` lacks."""
  out = []
  for field in dataclasses.fields(cls):
    key = prefix + field.name
    if field.name not in node:
      out.append(key)
    elif dataclasses.is_dataclass(field.default) and hasattr(node[field.name], "keys"):
      out += _absent_keys(type(field.default), node[field.name], key + ".")
  return out


def test_values_are_typed_and_defaults_filled():
  c = config_lib.parse(ml_collections.ConfigDict(
      {"preference": {"beta": 2, "optim": {"learning_rate": 1e-3}}, "methods": ["sft", "dpo"]}))
  assert c.preference.beta == 2.0 and isinstance(c.preference.beta, float)
  assert c.methods == ("sft", "dpo") and c.preference.optim.learning_rate == 1e-3
  assert c.sft == config_lib.SFTConfig()  # an absent section takes its defaults


@pytest.mark.parametrize("key,value,message", [
    ("preference.beta", -1.0, r"config.preference.beta=-1.0: expected > 0"),
    ("preference.beta", 0.0, r"config.preference.beta=0.0: expected > 0"),
    ("smoothing.eps_max", 0.5, r"config.smoothing.eps_max=0.5: expected in \[0, 0.5\)"),
    ("smoothing.cdpo_eps", 0.6, r"config.smoothing.cdpo_eps=0.6: expected < 0.5"),
    ("sft.optim.learning_rate", 0.0, r"config.sft.optim.learning_rate=0.0: expected > 0"),
    ("sft.steps", -5, r"config.sft.steps=-5: expected >= 0"),
    ("sft.steps", "10", r"config.sft.steps='10': expected an integer, got str"),
    ("eval.split", "dev", r"config.eval.split='dev': expected one of \['train', 'val', 'test'\]"),
    ("eval.decoding", "beam", r"config.eval.decoding='beam': expected one of "
     r"\['free', 'candidates'\]"),
    ("preference.reference", "live", r"config.preference.reference='live': expected one of"),
    ("methods", ("sft", "kto"), r"config.methods\[1\]='kto': unknown method"),
    ("negatives.strategies", ("random", "hard"), r"config.negatives.strategies\[1\]='hard'"),
    ("model.overrides", {"hidden": 8}, r"config.model.overrides.hidden: unknown model field"),
    ("prompt.title_format", "csv", r"config.prompt.title_format='csv': expected one of "
     r"\['auto', 'comma', 'lines'\]"),
    ("data.max_seq_len", -1, r"config.data.max_seq_len=-1: expected >= 0 \(0: sized from"),
])
def test_bad_values_name_the_key(tmp_path, key, value, message):
  config = _config("synthetic_scratch.py")
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  workdir = tmp_path / "w"
  with pytest.raises(config_lib.ConfigError, match=message):
    pipeline.run(config, str(workdir), ["all"])
  assert not workdir.exists()  # nothing ran


def test_unknown_and_moved_keys_are_rejected_not_dropped(tmp_path):
  config = _config("synthetic_scratch.py")
  config.sft.stepz = 3
  with pytest.raises(config_lib.ConfigError, match=r"config.sft.stepz: unknown key; config.sft "
                     r"takes \[.*'steps'"):
    pipeline.run(config, str(tmp_path / "w"), ["all"])
  config = _config("synthetic_scratch.py")
  config.oracle.tau = 2.0
  with pytest.raises(config_lib.ConfigError, match="config.oracle.tau: unknown key; it moved to "
                     "config.smoothing.tau"):
    config_lib.parse(config)
  with pytest.raises(config_lib.ConfigError, match="config.bogus: unknown key"):
    config_lib.parse(ml_collections.ConfigDict({"bogus": 1}))


def test_cross_key_checks():
  config = _config("synthetic_scratch.py")
  config.data.min_history = 12
  with pytest.raises(config_lib.ConfigError, match="config.data.min_history=12 > "
                     "config.data.max_history=10"):
    config_lib.parse(config)
  config = _config("synthetic_scratch.py")
  config.oracle.max_len = 5
  with pytest.raises(config_lib.ConfigError, match="config.oracle.max_len=5: expected >= "
                     "config.data.max_history=10"):
    config_lib.parse(config)


def test_launcher_prints_an_input_error_as_one_line(tmp_path):
  """Exit code 2, `error: <message>` naming the key, no traceback; ROSEPO_TRACEBACK=1 shows it."""
  args = [sys.executable, "-m", "launch.main", "--config=configs/demo.py",
          "--config.preference.beta=-1.0", f"--workdir={tmp_path / 'w'}"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: config.preference.beta=-1.0: expected > 0")
  assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()
  proc = subprocess.run(args, cwd=REPO, env=dict(env, ROSEPO_TRACEBACK="1"),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_workdir_that_is_a_file_or_cannot_be_made_is_named(tmp_path, monkeypatch):
  config = _config("demo.py")
  (tmp_path / "file").write_text("keep")
  with pytest.raises(pipeline.WorkdirError, match=f"--workdir={tmp_path / 'file'} is a file"):
    pipeline.run(config, str(tmp_path / "file"), ["data"])
  with pytest.raises(pipeline.WorkdirError,
                     match=f"--workdir={tmp_path / 'file' / 'w'}: cannot create it"):
    pipeline.run(config, str(tmp_path / "file" / "w"), ["data"])
  assert (tmp_path / "file").read_text() == "keep"
  # gs:// without the gcs extra (gcsfs): named, with what to install
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # unimportable, installed or not
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  monkeypatch.chdir(tmp_path)
  with pytest.raises(pipeline.WorkdirError, match=r"--workdir=gs://b/run: .*gcsfs.* \(gs:// needs "
                     r"`pip install rosepo-jax\[gcs\]`\)"):
    pipeline.run(config, "gs://b/run", ["data"])
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  assert not os.path.exists(tmp_path / "gs:")


def test_strategy_weights_are_checked():
  config = _config("demo.py")
  config.preference.strategy_weights = {"semantic": 0.5, "hallucination": 0.0}
  assert config_lib.parse(config).preference.strategy_weights == {"semantic": 0.5,
                                                                 "hallucination": 0.0}
  config.preference.strategy_weights = {"semantics": 1.0}
  with pytest.raises(config_lib.ConfigError, match=r"strategy_weights.semantics: unknown strategy"):
    config_lib.parse(config)
  config.preference.strategy_weights = {"random": -1.0}
  with pytest.raises(config_lib.ConfigError, match=r"strategy_weights.random=-1.0: expected a "
                     r"number >= 0"):
    config_lib.parse(config)
