"""--stages=compile: the TPU-pod config's steps compile on a fake 8-device mesh, with a memory table;
a too-small HBM budget is a clear error."""

import pytest

from conftest import context
from rosepo_jax import aot, pipeline, sharding, train
from rosepo_jax import model as model_lib
from rosepo_jax.stages import compile as compile_stage
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
  report = compile_stage.run(context(config, ""))
  assert report["devices"] == 8 and report["mesh"]["fsdp"] == 8
  for step in ("sft", "preference"):
    s = report["steps"][step]
    assert s["peak_bytes"] > s["params_bytes"] > 0 and s["xla_flops_per_device"] > 0
  out = capsys.readouterr().out
  assert "| sft |" in out and "| preference |" in out and "peak GiB" in out
  assert f"compile: {report['params'] / 1e6:.3f}M params" in out  # small models in millions
  # Decoding (eval, negatives) runs the merged model: float32 parameters, about twice the bf16
  # base (+ small adapters) that the train steps hold.
  d = report["steps"]["decode"]
  assert config.model.param_dtype == "bfloat16" and "| decode |" in out
  assert d["params_bytes"] > 1.5 * report["steps"]["sft"]["params_bytes"]
  assert d["peak_bytes"] > d["params_bytes"] and d["xla_flops_per_device"] > 0


def test_compile_shards_adam_state_like_the_parameters():
  config = _small_pod_config()
  config.model.lora_rank = 0  # full fine-tuning: Adam's two moments are the size of the params
  steps = compile_stage.run(context(config, ""))["steps"]
  s = steps["sft"]
  assert s["opt_state_bytes"] == pytest.approx(2 * s["params_bytes"], rel=0.01)
  assert steps["decode"]["params_bytes"] == s["params_bytes"]  # no LoRA: the same model decodes


def test_compile_over_budget_is_a_clear_error():
  config = _small_pod_config()
  config.compile.hbm_gib = 1e-6
  with pytest.raises(MemoryError, match=r"exceeds config.compile.hbm_gib=1e-06 GiB for sft"):
    pipeline.run(config, "", ["compile"])


def test_pod_config_compiles_at_the_real_8b_widths(capsys):
  """The 8B config itself (preset llama3_8b: 4,096 wide, 128k vocabulary, GQA 32/8 heads; LoRA,
  fsdp over 8 fake devices) lowers and compiles abstractly, no weights read or allocated. Two of
  its 32 layers keep the suite fast: every parameter kind and sharding is in each layer. The full
  depth: `--stages=compile` on the config itself (launch/README.md)."""
  config = _config("llama3_8b_lora_pod.py")
  config.model.overrides = dict(num_layers=2)
  config.sft.batch_size = config.preference.batch_size = 8
  config.compile.seq_len = 256
  report = compile_stage.run(context(config, ""))
  v, d, kv, f = 128256, 4096, 8 * 128, 14336  # Llama-3-8B's published shapes, written out
  layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
  assert report["params"] == 2 * v * d + 2 * layer + d
  assert report["mesh"]["fsdp"] == 8 and report["devices"] == 8
  out = capsys.readouterr().out
  assert "| sft |" in out and "| preference |" in out


def test_xla_memory_grows_by_the_same_amount_per_layer():
  """Why 2 layers stand for 32: at the pod config's real widths, XLA's temporary bytes grow by
  the same amount for every layer added (1 -> 2 -> 3 layers within 5%), so the full depth's
  figure is the 1-layer figure plus 31 slopes. (XLA:CPU keeps every layer's gathered weights and
  activations live, remat or not; launch/README.md.)"""
  mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
  temps = []
  for layers in (1, 2, 3):
    cfg = model_lib.get_config("llama3_8b").replace(
        num_layers=layers, remat=True, dtype="bfloat16", param_dtype="bfloat16", lora_rank=16)
    temps.append(aot.compile_step(cfg, train.sft_loss_fn(16384),
                                  train.make_optimizer(train.OptimConfig(), 10), mesh, 64, 256,
                                  1, False, vocab_chunk=16384)["temp_bytes"])
  assert temps[2] - temps[1] == pytest.approx(temps[1] - temps[0], rel=0.05), temps


def test_analytic_memory_is_the_formula_written_out():
  """The analytic figures for the tiny preset (64 wide, 4 heads over 2 KV heads of 16, MLP 128,
  vocabulary 256, 2 layers, float32), 3 rows of 32 tokens, 8 scored positions, chunk 100."""
  cfg = model_lib.get_config("tiny")
  per_token = 5 * 64 + 2 * 4 * 16 + 2 * 2 * 16 + 3 * 128  # norms, residuals, q/k/v/o, MLP
  layer = 3 * 32 * per_token * 4 + 3 * 4 * 32 * 32 * (3 * 4 + 4)  # + scores (3 fp32) and probs
  assert aot._layer_activation_bytes(cfg, 3, 32, 32) == layer  # pylint: disable=protected-access
  block = 64 * 16 * (2 * 4 + 2 * 2) + 3 * 64 * 128 + 2 * 64
  weights = (2 * block + 256 * 64 * 2) * 4  # two gathered blocks, embedding and LM head (untied)
  head = 2 * 3 * 8 * 100 * 4
  assert aot.train_activation_bytes(cfg, 3, 32, 8, 100) == 2 * layer + layer + head + weights
  remat = cfg.replace(remat=True)
  assert aot.train_activation_bytes(remat, 3, 32, 8, 100) == (
      2 * 3 * 32 * 64 * 4 + 2 * layer + head + weights)
  cache = 2 * 2 * 3 * (32 + 5) * 2 * 16 * 4
  assert aot.decode_activation_bytes(cfg, 3, 32, 5) == (
      cache + 3 * 32 * per_token * 4 + 3 * 4 * 32 * 37 * 16 + weights)
