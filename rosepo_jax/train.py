"""Training: optimizer, jitted sharded train steps (SFT and preference), and the loop.

A train step is ``jax.jit`` with explicit in/out shardings over the mesh (parameters by their
logical axes, optimizer state alongside, the batch over data x fsdp) and donated state. Gradient
accumulation scans over micro-batches and normalises by the whole batch's denominator, so it
equals one big batch exactly (up to float summation order).

The loop checkpoints with orbax (async, keep-N, best-by-metric), resumes exactly (the data order
is a pure function of the step: `data.batching.StepSampler`), evaluates every N steps, writes
TensorBoard events (tensorboardX, no TensorFlow), shows steps, tokens/s and ETA, and stops with a
clear error on a non-finite loss, leaving the last good checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import json
import math
import os
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from rosepo_jax import checkpoints, files
from rosepo_jax.checkpoints import peft
from rosepo_jax import flops as flops_lib
from rosepo_jax import losses, multihost, progress, scoring, sharding
from rosepo_jax.data.batching import (PAD_SCORE, PROMPT_SCORE, BatchShape, EncodedRow, StepSampler,
                                     eval_batches, make_batch)
from rosepo_jax.model import Decoder, merge_lora, trainable


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-4
  warmup_steps: int = 0
  decay: str = "cosine"  # cosine | linear | constant
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  max_grad_norm: float = 1.0  # 0 disables clipping


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  warmup = max(cfg.warmup_steps, 0)
  decay_steps = max(total_steps - warmup, 1)
  end = cfg.learning_rate * cfg.min_lr_ratio
  if cfg.decay == "cosine":
    after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.min_lr_ratio)
  elif cfg.decay == "linear":
    after = optax.linear_schedule(cfg.learning_rate, end, decay_steps)
  elif cfg.decay == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  else:
    raise ValueError(f"optim.decay={cfg.decay!r}; expected cosine, linear or constant")
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), after],
                              [warmup])


# The adapter parameters that are zero in the base model (adapters off).
LORA_ZEROS = ("lora_b", "token_delta", "head_token_delta")


def param_name(path) -> str:
  """The parameter's own name in a state pytree path (e.g. "kernel", "lora_b")."""
  keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
  return str(keys[-1]) if keys else ""


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup + decay and global-norm clipping; weight decay on matrices only
  (kernels and LoRA factors), never on norms, biases or embeddings."""
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_name(path) in ("kernel", "lora_a", "lora_b"), params)

  parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm > 0 else []
  parts.append(optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                           eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)


# ------------------------------------------------------------------------------------------------
# Loss functions: (sum of per-example losses, denominator, metric sums) on one micro-batch, so
# that accumulation can normalise by the whole batch.

LossFn = Callable[..., tuple[jax.Array, jax.Array, dict]]  # (model, batch, ref_model|None)


def sft_loss_fn(vocab_chunk: int, history_weight: float = 0.0) -> LossFn:
  """SFT's loss: the NLL of the response tokens (METHOD.md section 2), and with `history_weight`
  > 0 also of the rows' prompt targets (the history titles: SASRec's next-item objective inside
  the LLM), as one weighted token mean: (sum response NLL + w sum target NLL) / (#response
  tokens + w #target tokens). Logged: loss, and with the targets loss/history (their part of
  the loss)."""
  def fn(model, batch, ref_model=None):
    del ref_model
    logps_BxR = scoring.token_logps(model, batch, vocab_chunk)
    response = (batch["score_seg"] >= 0).astype(jnp.float32)
    target = history_weight * (batch["score_seg"] == PROMPT_SCORE).astype(jnp.float32)
    nll = -(logps_BxR * (response + target)).sum()
    metrics = {"loss": nll, "tokens": (batch["segments"] > 0).sum()}
    if history_weight:
      metrics["loss/history"] = -(logps_BxR * target).sum()
    return nll, (response + target).sum(), metrics
  return fn


def preference_loss_fn(objective: losses.Objective, num_rejected: int, beta: float,
                       vocab_chunk: int, sft_weight: float = 0.0) -> LossFn:
  """Preference loss under `objective` (`rosepo_jax.losses`), plus `sft_weight` times the chosen
  response's per-token NLL. Reference log-probs come from ``batch["ref_logps"]`` [B, K+1] when
  precomputed, else from `ref_model` (online, no gradient); ``batch["eps"]`` [B, K] is each
  pair's smoothing factor and ``batch["weights"]`` [B, K], when present, each pair's loss weight."""
  def fn(model, batch, ref_model=None):
    k1 = num_rejected + 1
    policy, counts = scoring.response_logps(model, batch, k1, vocab_chunk)
    if "ref_logps" in batch:
      ref = batch["ref_logps"]
    elif ref_model is not None:
      ref = jax.lax.stop_gradient(scoring.response_logps(ref_model, batch, k1, vocab_chunk)[0])
    else:
      raise ValueError("preference loss: no batch['ref_logps'] and no reference model")
    rejected_valid = (counts[:, 1:] > 0) & batch["row_valid"][:, None]
    loss_B, metrics = losses.preference_loss(
        objective, policy[:, 0], ref[:, 0], policy[:, 1:], ref[:, 1:], batch["eps"],
        rejected_valid, beta=beta, weights_BxK=batch.get("weights"))
    row = batch["row_valid"].astype(jnp.float32)
    if sft_weight:
      loss_B = loss_B + sft_weight * (-policy[:, 0] / jnp.maximum(counts[:, 0], 1.0))
    total = (loss_B * row).sum()
    sums = {k: (v * row).sum() for k, v in metrics.items()}
    sums["loss"] = total
    sums["tokens"] = (batch["segments"] > 0).sum()
    return total, row.sum(), sums
  return fn


# ------------------------------------------------------------------------------------------------
# Train step.


@dataclasses.dataclass
class TrainState:
  step: int
  params: nnx.State  # the trainable parameters only
  opt_state: Any


def make_step_fn(graphdef, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                 accum_steps: int = 1, reference: str = "none"):
  """The pure step ``(params, opt_state, frozen, batch) -> (params, opt_state, metrics)``.

  `frozen` is the non-trainable state (e.g. LoRA's base weights) plus, for an online reference
  policy, ``frozen["reference"]``: "model" = separate reference parameters, "lora_off" = this
  model with its LoRA B matrices and token-row deltas at zero (the base model). With ``accum_steps > 1`` the batch is
  split into micro-batches whose gradients, denominators and metric sums are added up first.
  """
  def reference_model(params, frozen):
    if reference == "model":
      return nnx.merge(graphdef, frozen["reference"], frozen["rest"])
    if reference == "lora_off":
      off = jax.tree_util.tree_map_with_path(
          lambda path, x: jnp.zeros_like(x) if param_name(path) in LORA_ZEROS else x, params)
      return nnx.merge(graphdef, jax.lax.stop_gradient(off), frozen["rest"])
    return None

  def micro(params, frozen, batch):
    def f(p):
      model = nnx.merge(graphdef, p, frozen["rest"])
      total, denom, sums = loss_fn(model, batch, reference_model(params, frozen))
      return total, (denom, sums)
    (_, (denom, sums)), grads = jax.value_and_grad(f, has_aux=True)(params)
    return grads, denom, sums

  def step(params, opt_state, frozen, batch):
    if accum_steps == 1:
      grads, denom, sums = micro(params, frozen, batch)
    else:
      split = jax.tree.map(
          lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)
      shapes = jax.eval_shape(micro, params, frozen, jax.tree.map(lambda x: x[0], split))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

      def body(carry, mb):
        return jax.tree.map(jnp.add, carry, micro(params, frozen, mb)), None

      (grads, denom, sums), _ = jax.lax.scan(body, zeros, split)
    denom = jnp.maximum(denom, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {k: v / denom for k, v in sums.items() if k != "tokens"}
    metrics["grad_norm"] = optax.tree.norm(grads)
    if "tokens" in sums:  # all non-padding tokens processed (throughput), not a mean
      metrics["tokens"] = sums["tokens"]
    return params, opt_state, metrics

  return step


class Trainer:
  """One model + loss + optimizer on a mesh (or one device): state and the jitted step.

  Trainable parameters (`model.trainable`): every nnx.Param but the frozen ones (the oracle's
  item table), or only the LoRA adapters (with their token-row deltas and a hybrid item
  projection) when the model has them (base weights frozen). `reference_model` (same architecture) enables an online reference
  policy; with LoRA, ``online_reference=True`` uses the base model (adapters off) instead.
  """

  def __init__(self, model: Decoder, loss_fn: LossFn, optimizer: optax.GradientTransformation,
               mesh=None, accum_steps: int = 1, rules=sharding.RULES,
               reference_model: Decoder | None = None, online_reference: bool = False):
    self.mesh, self.rules, self.accum_steps = mesh, rules, accum_steps
    self.model_cfg = model.cfg
    lora = bool(model.cfg.lora_rank)
    sharding.shard_module(model, mesh, rules)
    self.graphdef, params, rest = nnx.split(model, trainable(model.cfg), ...)
    self.frozen = {"rest": rest}
    reference = "none"
    if reference_model is not None:
      sharding.shard_module(reference_model, mesh, rules)
      self.frozen["reference"] = nnx.state(reference_model, trainable(reference_model.cfg))
      reference = "model"
    elif online_reference:
      if not lora:
        raise ValueError("online_reference without LoRA needs a reference_model")
      if model.cfg.item_rows[1]:
        raise ValueError("online_reference with LoRA: the adapters-off model would carry the "
                         "trained item projection; fold the item embeddings into the rows first "
                         "(model.fold_item_embeddings)")
      reference = "lora_off"
    with sharding.use_mesh(mesh):
      if mesh is None:
        opt_state = jax.jit(optimizer.init)(params)
      else:
        opt_s = sharding.optimizer_state_shardings(
            jax.eval_shape(optimizer.init, params), params,
            sharding.state_shardings(params, mesh, rules), mesh)
        opt_state = jax.jit(optimizer.init, out_shardings=opt_s)(params)
    self.initial = TrainState(0, params, opt_state)
    self._step_fn = make_step_fn(self.graphdef, loss_fn, optimizer, accum_steps, reference)
    self._jitted: dict = {}

  def model(self, params: nnx.State) -> Decoder:
    return nnx.merge(self.graphdef, params, self.frozen["rest"])

  def _jit_for(self, state: TrainState, batch: dict):
    key = tuple(sorted((k, np.ndim(v)) for k, v in batch.items()))
    if key not in self._jitted:
      if self.mesh is None:
        self._jitted[key] = jax.jit(self._step_fn, donate_argnums=(0, 1))
      else:
        shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # pylint: disable=unnecessary-lambda-assignment
        params_s, opt_s = shardings(state.params), shardings(state.opt_state)
        batch_s = {k: sharding.batch_sharding(sharding.local_to_global_shape(np.shape(v)),
                                              self.mesh, rules=self.rules)
                   for k, v in batch.items()}
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._jitted[key] = jax.jit(
            self._step_fn, donate_argnums=(0, 1),
            in_shardings=(params_s, opt_s, shardings(self.frozen), batch_s),
            out_shardings=(params_s, opt_s, replicated))
    return self._jitted[key]

  def step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch (this process's rows in a multi-host job)."""
    rows = len(next(iter(batch.values())))
    if rows % self.accum_steps:
      raise ValueError(f"batch of {rows} rows is not divisible by "
                       f"accum_steps={self.accum_steps}")
    fn = self._jit_for(state, batch)
    batch = sharding.global_batch(batch, self.mesh, rules=self.rules)
    with sharding.use_mesh(self.mesh):
      params, opt_state, metrics = fn(state.params, state.opt_state, self.frozen, batch)
    return TrainState(state.step + 1, params, opt_state), metrics


# ------------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  num_steps: int
  log_every: int = 10
  eval_every: int = 0  # 0: only at the end
  checkpoint_every: int = 100
  keep_checkpoints: int = 2
  best_metric: str = ""  # an eval metric: keep the best checkpoint by it too
  best_mode: str = "max"
  progress: bool = True


class NonFiniteLossError(FloatingPointError):
  pass


def _checkpoint_manager(directory: str, cfg: LoopConfig) -> ocp.CheckpointManager:
  """Keeps the latest `keep_checkpoints` (exact resume needs the latest) plus, with a
  `best_metric`, the best checkpoint by that eval metric."""
  policies = [ocp.checkpoint_managers.LatestN(n=cfg.keep_checkpoints)]
  best_fn = None
  if cfg.best_metric:
    if cfg.best_mode not in ("min", "max"):
      raise ValueError(f"best_mode={cfg.best_mode!r}; expected min or max")
    best = cfg.best_metric
    best_fn = lambda m: m[best]  # pylint: disable=unnecessary-lambda-assignment
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=best_fn, reverse=cfg.best_mode == "min", n=1,
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(  # with best_fn, each step's metrics are written too
      create=True, enable_async_checkpointing=True, best_fn=best_fn,
      best_mode=cfg.best_mode if cfg.best_metric else "max",
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
  return ocp.CheckpointManager(files.native(directory), options=options)


def _save(manager, state: TrainState, metrics: dict | None = None) -> None:
  manager.save(state.step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params.to_pure_dict()),
      opt_state=ocp.args.StandardSave(state.opt_state)), metrics=metrics)


def best_step(directory: str, metric: str, mode: str = "min") -> int | None:
  """The kept checkpoint of `directory` whose eval `metric` (saved with it) is the lowest (mode
  "min") or highest ("max"); None when no kept checkpoint has it."""
  if not multihost.agree(files.isdir(directory)):
    return None
  manager = ocp.CheckpointManager(files.native(directory))
  scored = [(float(m[metric]), s) for s in manager.all_steps()
            if (m := manager.metrics(s)) and metric in m]
  manager.close()
  if not scored:
    return None
  return (min(scored) if mode == "min" else max(scored, key=lambda x: (x[0], -x[1])))[1]


def restore_latest(directory: str, like: TrainState, step: int | None = None
                   ) -> TrainState | None:
  """The latest checkpoint in `directory` (or the one at `step`), restored into `like`'s
  structure and shardings.

  Multi-host: every process takes process 0's view of whether `directory` exists, so all of them
  run the same collectives (another process may be creating it at this moment).
  """
  if not multihost.agree(files.isdir(directory)):
    return None
  manager = ocp.CheckpointManager(files.native(directory))
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # pylint: disable=unnecessary-lambda-assignment
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract(like.params.to_pure_dict())),
      opt_state=ocp.args.StandardRestore(abstract(like.opt_state))))
  params = jax.tree.map(lambda x: x, like.params)  # a structural copy to fill
  nnx.replace_by_pure_dict(params, restored["params"])
  manager.close()
  return TrainState(int(step), params, restored["opt_state"])


def train_loop(trainer: Trainer, batch_fn: Callable[[int], dict], cfg: LoopConfig,
               workdir: str, eval_fn: Callable[[TrainState], dict] | None = None,
               resume: bool = True,
               batch_flops: Callable[[dict], float] | None = None) -> tuple[TrainState, dict]:
  """Runs steps ``state.step .. cfg.num_steps - 1``; `batch_fn(step)` gives step's batch.

  A step's metrics are read from the device only after the next step has been dispatched, so
  the host builds and sends batch n+1 while the device still runs step n; before an eval or a
  checkpoint the pending metrics are read first (a non-finite loss never reaches a checkpoint).
  Writes ``workdir/checkpoints`` (orbax), ``workdir/tb`` (TensorBoard) and the same training
  scalars as JSON lines in ``workdir/metrics.jsonl`` (after a resume a step may appear twice: the
  last line wins). Returns the final state and the last eval metrics.
  """
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

  files.makedirs(workdir)
  ckpt_dir = files.join(workdir, "checkpoints")
  state = (restore_latest(ckpt_dir, trainer.initial) if resume else None) or trainer.initial
  if state.step:
    logging.info("resumed %s at step %d", workdir, state.step)
  manager = _checkpoint_manager(ckpt_dir, cfg)
  writer = SummaryWriter(files.native(files.join(workdir, "tb"))) if multihost.is_leader() else None
  bar = progress.bar(cfg.num_steps, os.path.basename(workdir.rstrip("/")), "step",
                     initial=state.step, enabled=cfg.progress)
  eval_metrics: dict = {}
  window = {"tokens": 0.0, "flops": 0.0, "start": time.time()}
  device = jax.devices()[0]

  def report(step: int, device_metrics: dict, batch: dict) -> None:
    """Reads step `step`'s metrics (blocking), checks the loss, logs them."""
    metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not math.isfinite(metrics["loss"]):
      raise NonFiniteLossError(
          f"{workdir}: non-finite loss {metrics['loss']} at step {step}; stopping. The "
          f"last good checkpoint is in {ckpt_dir} (step {manager.latest_step()}). Lower the "
          "learning rate or check the data of this step.")
    window["tokens"] += metrics.get("tokens", 0.0)
    if batch_flops:
      window["flops"] += batch_flops(batch)
    bar.update(1)
    if step % cfg.log_every and step != cfg.num_steps:
      return
    elapsed = max(time.time() - window["start"], 1e-9)
    metrics["tokens_per_s"] = window["tokens"] / elapsed
    if batch_flops:
      metrics["model_flops_per_s"] = window["flops"] / elapsed
      utilisation = flops_lib.mfu(window["flops"] / elapsed, device.device_kind,
                                  jax.device_count())
      if utilisation is not None:
        metrics["mfu"] = utilisation
    window.update(tokens=0.0, flops=0.0, start=time.time())
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
    if writer:
      for k, v in metrics.items():
        writer.add_scalar(f"train/{k}", v, step)
      files.append_text(files.join(workdir, "metrics.jsonl"),
                        json.dumps({"step": int(step), **metrics}) + "\n")

  pending = None  # (step, device metrics, batch) of the last dispatched step, not yet read
  try:
    while state.step < cfg.num_steps:
      batch = batch_fn(state.step)
      state, metrics = trainer.step(state, batch)
      if pending:
        report(*pending)
      pending = (state.step, metrics, batch)
      done = state.step == cfg.num_steps
      evaluate = eval_fn and ((cfg.eval_every and state.step % cfg.eval_every == 0) or done)
      # every evaluated step is saved with its metrics when the best one is kept
      save = state.step % cfg.checkpoint_every == 0 or done or bool(evaluate and cfg.best_metric)
      if not (evaluate or save):
        continue
      report(*pending)
      pending = None
      if evaluate:
        eval_metrics = eval_fn(state)
        if writer:
          for k, v in eval_metrics.items():
            writer.add_scalar(f"eval/{k}", v, state.step)
        logging.info("step %d eval %s", state.step, json.dumps(eval_metrics))
      if save:
        _save(manager, state, eval_metrics if cfg.best_metric and eval_metrics else None)
  finally:
    manager.wait_until_finished()
    manager.close()
    bar.close()
    if writer:
      writer.close()
  return state, eval_metrics


# ------------------------------------------------------------------------------------------------
# What the training stages share: data order, validation loss, FLOPs accounting, saving.


def step_sampler(num_examples: int, global_batch: int, seed: int) -> StepSampler:
  """The deterministic data order of a training run, this process's share of each batch."""
  return StepSampler(num_examples, global_batch, seed, jax.process_index(), jax.process_count())


def loss_evaluator(trainer: Trainer, loss_fn: LossFn, rows: Sequence[EncodedRow],
                   shape: BatchShape, num_responses: int, batch_size: int):
  """`evaluate(state) -> {"loss": mean loss over rows}` (e.g. validation), batched and jitted."""
  @jax.jit
  def eval_step(params, frozen, batch):
    total, denom, _ = loss_fn(nnx.merge(trainer.graphdef, params, frozen["rest"]), batch)
    return total, denom

  def evaluate(state: TrainState) -> dict:
    total, denom = 0.0, 0.0
    for idx in eval_batches(len(rows), batch_size):
      batch = make_batch([rows[i] if i >= 0 else None for i in idx], shape, num_responses,
                         bucket_rows=[rows[i] for i in idx if i >= 0])
      t, d = eval_step(state.params, trainer.frozen, batch)
      total, denom = total + float(t), denom + float(d)
    return {"loss": total / max(denom, 1.0)}
  return evaluate


def batch_flops_fn(cfg, lora: bool, online_reference: bool = False):
  """Model FLOPs of a train step from this process's batch (LM head at scored tokens only; an
  online reference adds its forward)."""
  def fn(batch) -> float:
    tokens = float((batch["segments"] > 0).sum())
    scored = float((batch["score_seg"] != PAD_SCORE).sum())
    seq = batch["tokens"].shape[1]
    total = flops_lib.train_flops(cfg, tokens, seq, scored, 0.0 if lora else 1.0)
    if online_reference:
      total += flops_lib.train_flops(cfg, tokens, seq, scored) / 3.0
    return jax.process_count() * total
  return fn


def save_trained(trainer: Trainer, state: TrainState, folder: str, codec,
                 adapter_folder: str = "") -> None:
  """The trained model (LoRA merged into the weights) as an orbax model dir with its tokenizer
  (`codec`: a `data.codec.Codec` or an HF tokenizer, anything with ``save_pretrained``);
  a LoRA model's adapters also alone, as a PEFT folder in `adapter_folder`. Collective in a
  multi-process job (every process writes its shards)."""
  model = trainer.model(state.params)
  checkpoints.save_orbax(merge_lora(model), folder, tokenizer=codec)
  if adapter_folder and model.cfg.lora_rank:
    peft.save_adapter(model, adapter_folder)
