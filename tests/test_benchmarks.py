"""benchmarks/ scripts that choose recipes: they measure on validation, never on test."""

import os
import subprocess
import sys

from conftest import REPO


def test_the_sft_curve_measures_validation_unless_told(tmp_path):
  """Recipes (learning rate, curriculum, steps) are chosen on benchmarks/sft_curve.py's curves:
  by default they evaluate the validation split; --split=test is a final table's."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
      [sys.executable, "benchmarks/sft_curve.py", "--config=configs/tiny.py", "--steps=2",
       "--every=2", "--examples=8", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
  assert lines and all(line.startswith("step 2 (val, 8 examples) loss") for line in lines), lines
