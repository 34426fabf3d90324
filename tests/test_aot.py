"""--stages=compile: the TPU-pod config's steps compile on a fake 8-device mesh, with a memory table;
a too-small HBM budget is a clear error."""

import os
import subprocess
import sys

from conftest import REPO
import pytest

from rosepo_jax import aot, pipeline
from test_data_pipeline import _config


def _small_pod_config():
  """configs/llama3_8b_lora_pod.py with the model cut to a small Llama (same code path)."""
  config = _config("llama3_8b_lora_pod.py")
  config.model.update(init="/nonexistent/weights", preset="tiny", lora_rank=4)
  config.model.overrides = dict(vocab_size=512, num_layers=2)
  config.sft.batch_size = 8
  config.preference.batch_size = 8
  config.compile.seq_len = 128
  return config


def test_compile_reports_memory_for_the_pod_mesh(capsys):
  config = _small_pod_config()
  report = aot.run_compile(config, "")
  assert report["devices"] == 8 and report["mesh"]["fsdp"] == 8
  for step in ("sft", "preference"):
    s = report["steps"][step]
    assert s["peak_bytes"] > s["params_bytes"] > 0 and s["xla_flops_per_device"] > 0
  out = capsys.readouterr().out
  assert "| sft |" in out and "| preference |" in out and "peak GiB" in out


def test_compile_shards_adam_state_like_the_parameters():
  config = _small_pod_config()
  config.model.lora_rank = 0  # full fine-tuning: Adam's two moments are the size of the params
  s = aot.run_compile(config, "")["steps"]["sft"]
  assert s["opt_state_bytes"] == pytest.approx(2 * s["params_bytes"], rel=0.01)


def test_compile_over_budget_is_a_clear_error():
  config = _small_pod_config()
  config.compile.hbm_gib = 1e-6
  with pytest.raises(MemoryError, match=r"exceeds config.compile.hbm_gib=1e-06 GiB for sft"):
    pipeline.run(config, "", ["compile"])


def test_launcher_compiles_the_real_pod_config_shapes():
  """The 8B config itself (preset llama3_8b, LoRA, fsdp over 8 fake devices) lowers and compiles
  abstractly: no weights are read or allocated."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/llama3_8b_lora_pod.py",
       "--workdir=/tmp/unused", "--stages=compile", "--config.sft.batch_size=8",
       "--config.preference.batch_size=8", "--config.compile.seq_len=256"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "8.03" in proc.stdout and "| preference |" in proc.stdout, proc.stdout
