"""Train steps and loop: learning, accumulation, sharding, resume, NaN guard."""

import json
import os
import subprocess
import sys

from conftest import REPO, assert_close
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rosepo_jax import losses, methods
from rosepo_jax import model as M
from rosepo_jax import scoring
from rosepo_jax import sharding as S
from rosepo_jax import train as T
from rosepo_jax.data import batching as B
import train_helper


def _params(state):
  return {k: np.asarray(v.get_value()) for k, v in state.params.flat_state()}


def _sft_batch(n=8, seed=0):
  return B.make_batch(train_helper.rows(n, seed), B.BatchShape(seq_multiple=32), 1)


def test_history_loss_is_the_weighted_token_mean_of_a_float64_reference():
  """sft_loss_fn(history_weight=w): (sum response NLL + w sum target NLL) / (#response tokens +
  w #target tokens), each log-prob from one full forward with a float64 log-softmax; w = 0 is
  the plain SFT loss, and loss/history is the targets' part."""
  model = M.init_model(M.get_config("tiny"), seed=2)
  rs = np.random.RandomState(1)
  rows = []
  for n in (9, 12, 7):
    prompt = tuple(rs.randint(3, 256, n).tolist())
    rows.append(B.EncodedRow(prompt, ((int(rs.randint(3, 256)), 2),),
                             targets=tuple(sorted(rs.choice(np.arange(1, n), 3, replace=False)))))
  batch = B.make_batch(rows, B.BatchShape(seq_multiple=16), 1)
  resp, hist = [], []
  for row in rows:
    seq = row.prompt + row.responses[0]
    valid = jnp.ones((1, len(seq)), bool)
    logits, _ = model(jnp.asarray([seq]), M.positions_from_mask(valid), M.causal_mask(valid))
    logits = np.asarray(logits[0], np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    p = len(row.prompt)
    resp += [logp[p - 1 + j, seq[p + j]] for j in range(len(row.responses[0]))]
    hist += [logp[t - 1, seq[t]] for t in row.targets]
  for w in (0.0, 0.5, 2.0):
    total, denom, metrics = T.sft_loss_fn(64, history_weight=w)(model, batch)
    want = (-sum(resp) - w * sum(hist)) / (len(resp) + w * len(hist))
    assert float(total / denom) == pytest.approx(want, rel=1e-5)
    if w:
      assert float(metrics["loss/history"] / denom) == pytest.approx(
          -w * sum(hist) / (len(resp) + w * len(hist)), rel=1e-5)
    else:
      assert "loss/history" not in metrics


def test_one_sft_step_lowers_loss_on_fixed_batch():
  batch = _sft_batch()
  trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=0), T.sft_loss_fn(100),
                      optax.adam(1e-2))
  state, m0 = trainer.step(trainer.initial, batch)
  _, m1 = trainer.step(state, batch)
  assert float(m1["loss"]) < float(m0["loss"])
  assert float(m0["tokens"]) == (batch["segments"] > 0).sum()


def _pref_batch(model, k=1, n=4):
  data = train_helper.rows(n, seed=3, responses=k + 1)
  batch = B.make_batch(data, B.BatchShape(seq_multiple=32), k + 1)
  logps, _ = scoring.response_logps(model, {kk: jnp.asarray(v) for kk, v in batch.items()}, k + 1)
  batch["ref_logps"] = np.asarray(logps)
  batch["eps"] = np.zeros((n, k), np.float32)
  return batch


@pytest.mark.parametrize("method,k", [("dpo", 1), ("sdpo", 3), ("rosepo", 2)])
def test_preference_steps_reach_full_reward_accuracy(method, k):
  model = M.init_model(M.get_config("tiny"), seed=2)
  batch = _pref_batch(model, k)
  batch["eps"] = np.full(batch["eps"].shape, 0.1, np.float32)
  trainer = T.Trainer(model, T.preference_loss_fn(methods.get(method).objective, k, beta=1.0, vocab_chunk=64),
                      optax.adam(1e-3))
  state = trainer.initial
  for _ in range(50):
    state, metrics = trainer.step(state, batch)
  assert float(metrics["rewards/accuracy"]) == 1.0
  assert float(metrics["rewards/margin"]) > 0


def test_gradient_accumulation_equals_one_big_batch():
  batch = _sft_batch(n=8, seed=4)
  results = []
  for accum in (1, 4):
    trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=3), T.sft_loss_fn(64),
                        optax.sgd(0.1), accum_steps=accum)
    state, metrics = trainer.step(trainer.initial, batch)
    results.append((_params(state), float(metrics["loss"])))
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)
  for key, value in results[0][0].items():
    assert_close(results[1][0][key], value)


def test_sharded_train_step_equals_single_device():
  model = M.init_model(M.get_config("tiny"), seed=5)
  batch = _pref_batch(model, k=2, n=8)
  outs = []
  for mesh in (None, S.make_mesh(fsdp=2, tensor=4)):
    trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=5),
                        T.preference_loss_fn(losses.cdpo, 2, beta=0.5, vocab_chunk=64),
                        # SGD: the update is linear in the gradient. (Adam's first step,
                        # g / (|g| + 1e-8), turns float-order noise in near-zero gradients
                        # into O(lr) differences, which would test Adam, not sharding.)
                        optax.sgd(0.5), mesh=mesh)
    state, metrics = trainer.step(trainer.initial, batch)
    if mesh is not None:
      q = state.params["layers"][0]["attn"]["q_proj"]["kernel"].get_value()
      assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    outs.append((_params(state), float(metrics["loss"])))
  assert outs[0][1] == pytest.approx(outs[1][1], rel=1e-5)
  for key, value in outs[0][0].items():
    assert_close(outs[1][0][key], value)


def test_optimizer_state_is_sharded_like_the_parameters():
  """Adam's moments take each parameter's sharding (FSDP shards the optimizer state too);
  the step count is replicated."""
  mesh = S.make_mesh(fsdp=2, tensor=4)
  trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=5), T.sft_loss_fn(64),
                      optax.adam(1e-3), mesh=mesh)
  params = jax.tree.leaves(trainer.initial.params)
  adam = trainer.initial.opt_state[0]
  for moment in (adam.mu, adam.nu):
    for p, m in zip(params, jax.tree.leaves(moment)):
      assert m.sharding.spec == p.sharding.spec and m.shape == p.shape
  assert adam.count.sharding.spec == jax.sharding.PartitionSpec()
  assert any(p.sharding.spec != jax.sharding.PartitionSpec() for p in params)


def test_resume_after_process_exit_is_exact(tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  helper = os.path.join(REPO, "tests", "train_helper.py")

  def run(workdir, steps, out):
    proc = subprocess.run([sys.executable, helper, str(workdir), str(steps), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

  run(tmp_path / "straight", 6, tmp_path / "straight.npz")
  run(tmp_path / "resumed", 3, tmp_path / "half.npz")
  run(tmp_path / "resumed", 6, tmp_path / "resumed.npz")
  a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
  for key in a.files:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7, err_msg=key)
  order = lambda p: [json.loads(l) for l in open(p)]  # pylint: disable=unnecessary-lambda-assignment
  straight = order(tmp_path / "straight.npz.order.jsonl")
  resumed = order(tmp_path / "half.npz.order.jsonl") + order(tmp_path / "resumed.npz.order.jsonl")
  assert [r["step"] for r in resumed] == list(range(6)) and resumed == straight


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  data = train_helper.rows(8)
  shape = B.BatchShape(seq_multiple=32)
  sft = T.sft_loss_fn(64)

  def poisoned_loss(model, batch, ref_model=None):  # multiplies the loss by the batch's "scale" (NaN at step 2)
    total, denom, sums = sft(model, batch, ref_model)
    total = total * batch["scale"][0]
    return total, denom, dict(sums, loss=total)

  trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=1), poisoned_loss, optax.sgd(1e-3))

  def batch_fn(step):
    batch = B.make_batch(data[:4], shape, 1)
    batch["scale"] = np.full((4,), np.nan if step == 2 else 1.0, np.float32)
    return batch

  cfg = T.LoopConfig(num_steps=5, log_every=1, checkpoint_every=1, progress=False)
  with pytest.raises(T.NonFiniteLossError, match=r"non-finite loss nan at step 3.*\(step 2\)"):
    T.train_loop(trainer, batch_fn, cfg, str(tmp_path))
  restored = T.restore_latest(str(tmp_path / "checkpoints"),
                              T.Trainer(M.init_model(M.get_config("tiny")), sft,
                                        optax.sgd(1e-3)).initial)
  assert restored.step == 2
  assert all(np.isfinite(v).all() for v in _params(restored).values())
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))


def test_schedules():
  cfg = T.OptimConfig(learning_rate=1.0, warmup_steps=10, decay="linear", min_lr_ratio=0.1)
  lr = T.learning_rate_schedule(cfg, 110)
  assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(1.0)
  assert float(lr(110)) == pytest.approx(0.1)
  cos = T.learning_rate_schedule(T.OptimConfig(learning_rate=1.0, decay="cosine",
                                               min_lr_ratio=0.0), 100)
  assert float(cos(50)) == pytest.approx(0.5, abs=1e-6)


def test_online_reference_equals_precomputed():
  model = M.init_model(M.get_config("tiny"), seed=6)
  batch = _pref_batch(model, k=2)
  online = {k: v for k, v in batch.items() if k != "ref_logps"}
  results = []
  for b, ref in ((batch, None), (online, M.init_model(M.get_config("tiny"), seed=6))):
    trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=6),
                        T.preference_loss_fn(losses.dpo, 2, beta=1.0, vocab_chunk=64),
                        optax.sgd(0.5), reference_model=ref)
    state, metrics = trainer.step(trainer.initial, b)
    results.append((_params(state), float(metrics["loss"])))
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)
  for key, value in results[0][0].items():
    assert_close(results[1][0][key], value)


@pytest.mark.parametrize("token_rows", [(0, 0), (3, 253)])  # (first, count): no rows; titles
def test_lora_trains_adapters_only_against_the_base_model(token_rows):
  """LoRA (and token rows) train alone; the online reference is the base model (adapters off):
  after training, a step against it computes what a step against the base's precomputed
  log-probabilities computes."""
  base = M.init_model(M.get_config("tiny"), seed=7)
  batch = _pref_batch(base, k=1)  # reference log-probs of the base model
  online = {k: v for k, v in batch.items() if k != "ref_logps"}
  lora = M.add_lora(base, rank=4, alpha=8.0, token_rows=token_rows)
  loss_fn = T.preference_loss_fn(losses.dpo, 1, beta=1.0, vocab_chunk=64)
  trainer = T.Trainer(lora, loss_fn, optax.adam(1e-2), online_reference=True)
  names = {str(k[-1]) for k, _ in trainer.initial.params.flat_state()}
  assert names == {"lora_a", "lora_b"} | ({"token_delta", "head_token_delta"} if token_rows[1]
                                          else set())
  state, m0 = trainer.step(trainer.initial, online)
  assert float(m0["rewards/margin"]) == pytest.approx(0.0, abs=1e-6)  # policy == reference
  for _ in range(20):
    state, metrics = trainer.step(state, online)
  assert float(metrics["rewards/accuracy"]) == 1.0
  trained = trainer.model(state.params)
  np.testing.assert_array_equal(np.asarray(trained.layers[0].attn.q_proj.kernel[...]),
                                np.asarray(base.layers[0].attn.q_proj.kernel[...]))
  assert np.abs(np.asarray(trained.layers[0].attn.q_proj.lora_b[...])).max() > 0
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # pylint: disable=unnecessary-lambda-assignment
  _, against_online = trainer.step(  # (a step donates its state)
      T.TrainState(state.step, copy(state.params), copy(state.opt_state)), online)
  offline = T.Trainer(trainer.model(copy(state.params)), loss_fn, optax.adam(1e-2))
  _, against_base = offline.step(offline.initial, batch)
  assert float(against_online["loss"]) == pytest.approx(float(against_base["loss"]), rel=1e-5)
  # Export merges the adapters: the merged plain model computes what the adapted one does.
  merged = M.merge_lora(trained)
  assert merged.cfg.lora_rank == 0
  b = {k: jnp.asarray(v) for k, v in online.items()}
  assert_close(scoring.response_logps(merged, b, 2)[0], scoring.response_logps(trained, b, 2)[0])


def test_weight_decay_applies_to_matrices_only():
  model = M.init_model(M.get_config("tiny"), seed=8)
  params = nnx.state(model, nnx.Param)
  opt = T.make_optimizer(T.OptimConfig(learning_rate=0.1, weight_decay=0.5, max_grad_norm=0), 10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zeros, opt.init(params), params)
  flat = dict(updates.flat_state())
  assert np.abs(np.asarray(flat[("layers", 0, "mlp", "up_proj", "kernel")].get_value())).max() > 0
  for key in [("embed",), ("final_norm", "scale"), ("layers", 1, "input_norm", "scale")]:
    assert np.abs(np.asarray(flat[key].get_value())).max() == 0, key


def test_checkpoints_keep_latest_and_best(tmp_path):
  data = train_helper.rows(8)
  shape = B.BatchShape(seq_multiple=32)
  trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=1), T.sft_loss_fn(64),
                      optax.sgd(1e-3))
  scores = {2: 0.5, 4: 0.1, 6: 0.9, 8: 0.7}  # "loss" by step: best (min) at step 4

  cfg = T.LoopConfig(num_steps=8, log_every=2, eval_every=2, checkpoint_every=2,
                     keep_checkpoints=1, best_metric="loss", best_mode="min", progress=False)
  T.train_loop(trainer, lambda step: B.make_batch(data[:4], shape, 1), cfg, str(tmp_path),
               eval_fn=lambda state: {"loss": scores[state.step]})
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept == [4, 8]  # the best by eval loss, and the latest for resume


def test_bf16_compute_step_learns_with_fp32_master_weights():
  trainer = T.Trainer(M.init_model(M.get_config("tiny", dtype="bfloat16"), seed=0),
                      T.sft_loss_fn(100), optax.adam(1e-2))
  batch = _sft_batch()
  state, first = trainer.step(trainer.initial, batch)
  for _ in range(3):
    state, metrics = trainer.step(state, batch)
  assert float(metrics["loss"]) < float(first["loss"])
  assert state.params["embed"].get_value().dtype == jnp.float32


def test_bf16_lora_merge_keeps_small_updates():
  """bf16 parameters, a small adapter update: the merged kernel is W + scale * A @ B in float32
  (a float64 reference), not its bf16 rounding, which loses a large share of the update."""
  cfg = M.get_config("tiny").replace(param_dtype="bfloat16")
  lora = M.add_lora(M.init_model(cfg, seed=1), rank=4, alpha=8.0)
  proj = lora.layers[0].attn.q_proj
  rs = np.random.RandomState(0)
  proj.lora_b[...] = jnp.asarray(rs.normal(0, 1e-4, proj.lora_b[...].shape), jnp.bfloat16)
  merged = M.merge_lora(lora)
  assert merged.cfg.param_dtype == "float32" and merged.cfg.lora_rank == 0
  w, a, b = (np.asarray(x[...], np.float64) for x in (proj.kernel, proj.lora_a, proj.lora_b))
  want = w + (8.0 / 4) * (a @ b)
  got = np.asarray(merged.layers[0].attn.q_proj.kernel[...])
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  rounded = np.asarray(jnp.asarray(want, jnp.bfloat16), np.float64)
  assert np.mean(rounded == w) > 0.1  # what a bf16 merge loses: these updates vanish
  np.testing.assert_array_equal(np.asarray(merged.embed[...]),
                                np.asarray(lora.embed[...], np.float32))
