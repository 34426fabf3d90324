"""FLOPs accounting against XLA's own count, the peak table and MFU in the training logs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import flops as F
from rosepo_jax import model as M


def test_forward_flops_match_xla_cost_analysis():
  """Our forward count (train_flops / 3 for a fully trained model, attention made non-causal as
  XLA computes the full score matrix) within 3% of XLA's count of the compiled forward."""
  cfg = M.get_config("tiny", vocab_size=512, hidden_size=128, intermediate_size=384, head_dim=32)
  model = M.init_model(cfg, seed=0)
  b, t = 4, 64
  tokens = jnp.zeros((b, t), jnp.int32)
  valid = jnp.ones((b, t), bool)
  fn = jax.jit(lambda tk: model(tk, M.positions_from_mask(valid), M.causal_mask(valid))[0])
  cost = fn.lower(tokens).compile().cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
  ours = F.train_flops(cfg, b * t, 2 * t) / 3.0  # seq 2t: causal halving undone
  assert abs(ours - xla) / xla < 0.03, (ours, xla)


def test_train_flops_written_out():
  cfg = M.get_config("tiny")
  d, f, l, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
  matmul = l * (d * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f) + v * d
  attention = 2 * 2 * l * cfg.num_heads * cfg.head_dim * 100 / 2
  assert F.train_flops(cfg, 1, 100) == pytest.approx(6 * matmul + 3 * attention)
  # LoRA: no weight gradients for the (frozen) matrices.
  assert F.train_flops(cfg, 1, 100, trainable_fraction=0.0) == pytest.approx(
      4 * matmul + 3 * attention)
  # The LM head only at scored tokens.
  assert F.train_flops(cfg, 10, 100, head_tokens=2) == pytest.approx(
      10 * F.train_flops(cfg, 1, 100) - 8 * 6 * v * d)


def test_peak_table_and_mfu():
  assert F.peak_flops("TPU v5 lite") == 197e12 and F.peak_flops("TPU v4") == 275e12
  assert F.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert F.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
  assert F.peak_flops("cpu") is None and F.mfu(1e12, "cpu", 1) is None
  assert F.mfu(989e12 * 2 * 0.4, "NVIDIA H200", 2) == pytest.approx(0.4)


def test_train_loop_logs_model_flops_and_mfu(tmp_path, monkeypatch):
  import train_helper  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(F, "PEAK_FLOPS", (("cpu", 1e9),))  # pretend the CPU has a known peak
  train_helper.run(str(tmp_path), 2, batch_flops=lambda batch: 5e8)
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert all(r["model_flops_per_s"] > 0 and r["mfu"] == pytest.approx(
      r["model_flops_per_s"] / (1e9 * jax.device_count())) for r in rows)
  assert np.isfinite([r["mfu"] for r in rows]).all()
