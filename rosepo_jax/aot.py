"""Ahead-of-time compilation of a train step for a model, mesh and batch size, without weights or
data, and its per-device memory (used by the compile stage, `rosepo_jax.stages.compile`).

For each step it prints (per device): parameter bytes, optimizer-state bytes, the compiled program's
argument / output / temporary bytes (`compiled.memory_analysis()`), their peak estimate
(arguments + outputs - donated aliases + temporaries), and the FLOPs of one step (XLA's count of
the per-device program, and the analytic model FLOPs of rosepo_jax/flops.py). With
``config.compile.hbm_gib`` set, a step whose peak exceeds it is a clear error.

On CPU the mesh comes from fake devices (XLA_FLAGS=--xla_force_host_platform_device_count=N), so a
TPU-pod layout can be checked on a laptop.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rosepo_jax import flops as flops_lib, generate, sharding, train
from rosepo_jax import model as model_lib

GIB = 1024 ** 3


def _abstract_batch(batch_size: int, seq_len: int, num_responses: int, preference: bool) -> dict:
  """ShapeDtypeStructs of a global batch as batching.make_batch builds it."""
  score_len = -(-max(seq_len // 4, 16) // 16) * 16
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # pylint: disable=unnecessary-lambda-assignment
  batch = {"tokens": i32(batch_size, seq_len), "segments": i32(batch_size, seq_len),
           "positions": i32(batch_size, seq_len), "score_pos": i32(batch_size, score_len),
           "score_tok": i32(batch_size, score_len), "score_seg": i32(batch_size, score_len),
           "row_valid": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
  if preference:
    batch["ref_logps"] = jax.ShapeDtypeStruct((batch_size, num_responses), jnp.float32)
    batch["eps"] = jax.ShapeDtypeStruct((batch_size, num_responses - 1), jnp.float32)
  return batch


def _per_device_bytes(tree, shardings) -> int:
  total = 0
  for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shape = s.shard_shape(leaf.shape) if hasattr(s, "shard_shape") else leaf.shape
    total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
  return total


def _layer_activation_bytes(cfg: model_lib.ModelConfig, rows: int, queries: int,
                            keys: int) -> int:
  """One block's forward activations for `rows` sequences of `queries` tokens attending to `keys`
  (written out: norm outputs, q/k/v/attention output, residuals, the MLP's gate, up and product;
  the attention scores in float32 three times (scores, masked, exponentiated) and the
  probabilities in the compute dtype)."""
  b = jnp.dtype(cfg.dtype).itemsize
  d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  per_token = 5 * d + 2 * cfg.num_heads * hd + 2 * cfg.num_kv_heads * hd + 3 * f
  scores = rows * cfg.num_heads * queries * keys * (3 * 4 + b)
  return rows * queries * per_token * b + scores


def _gathered_weight_bytes(cfg: model_lib.ModelConfig) -> int:
  """Weights a device holds whole while it computes (FSDP gathers them): two blocks (the one
  in use and the next, prefetched) and the embedding and LM head matrices."""
  embeddings = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
  block = (cfg.num_params - embeddings - cfg.hidden_size) // cfg.num_layers  # final norm: d
  return (2 * block + embeddings) * jnp.dtype(cfg.param_dtype).itemsize


def train_activation_bytes(cfg: model_lib.ModelConfig, rows: int, seq_len: int,
                           score_len: int, vocab_chunk: int) -> int:
  """Analytic per-device bytes a train step needs beyond its state, for `rows` sequences of
  `seq_len` per device: with remat, every block's input is kept and one block's activations
  (and their gradients) are live in the backward pass; without, every block's are kept. Plus
  the gathered weights and the LM head's chunked logits at the scored positions. A guide
  (within tens of percent), next to XLA's figure."""
  b = jnp.dtype(cfg.dtype).itemsize
  layer = _layer_activation_bytes(cfg, rows, seq_len, seq_len)
  kept = (cfg.num_layers * rows * seq_len * cfg.hidden_size * b + 2 * layer if cfg.remat
          else cfg.num_layers * layer + layer)
  head = 2 * rows * score_len * min(vocab_chunk, cfg.vocab_size) * 4
  return kept + head + _gathered_weight_bytes(cfg)


def decode_activation_bytes(cfg: model_lib.ModelConfig, rows: int, prompt_len: int,
                            max_new_tokens: int) -> int:
  """Analytic per-device bytes of decoding beyond its parameters: the KV cache, one block's
  prefill activations and the gathered weights."""
  slots = prompt_len + max_new_tokens
  cache = (2 * cfg.num_layers * rows * slots * cfg.num_kv_heads * cfg.head_dim
           * jnp.dtype(cfg.dtype).itemsize)
  return cache + _layer_activation_bytes(cfg, rows, prompt_len, slots) + _gathered_weight_bytes(cfg)


def _rows_per_device(mesh, batch_size: int, seq_len: int) -> int:
  return sharding.batch_sharding((batch_size, seq_len), mesh).shard_shape((batch_size, seq_len))[0]


def compile_step(cfg: model_lib.ModelConfig, loss_fn, optimizer, mesh, batch_size: int,
                 seq_len: int, num_responses: int, preference: bool, accum_steps: int = 1,
                 online_reference: bool = False, vocab_chunk: int = 8192) -> dict:
  """Lowers and compiles one train step; returns its per-device memory and FLOPs figures."""
  model = model_lib.abstract_model(cfg)
  lora = bool(cfg.lora_rank)
  graphdef, params, rest = nnx.split(model, model_lib.trainable(cfg), ...)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params_s = sharding.state_shardings(params, mesh)
  rest_s = sharding.state_shardings(rest, mesh)
  opt_abstract = jax.eval_shape(optimizer.init, params)
  opt_s = sharding.optimizer_state_shardings(opt_abstract, params, params_s, mesh)
  frozen, frozen_s = {"rest": rest}, {"rest": rest_s}
  reference = "none"
  if online_reference:
    reference = "lora_off" if lora else "model"
    if not lora:
      frozen["reference"], frozen_s["reference"] = params, params_s
  step = train.make_step_fn(graphdef, loss_fn, optimizer, accum_steps, reference)
  batch = _abstract_batch(batch_size, seq_len, num_responses, preference)
  batch_s = {k: sharding.batch_sharding(v.shape, mesh) for k, v in batch.items()}
  with sharding.use_mesh(mesh):
    lowered = jax.jit(step, donate_argnums=(0, 1),
                      in_shardings=(params_s, opt_s, frozen_s, batch_s),
                      out_shardings=(params_s, opt_s, replicated)).lower(
                          params, opt_abstract, frozen, batch)
    compiled = lowered.compile()
  out = {
      "params_bytes": _per_device_bytes(params, params_s) + _per_device_bytes(rest, rest_s),
      "opt_state_bytes": _per_device_bytes(opt_abstract, opt_s),
      "xla_flops_per_device": _xla_flops(compiled),
      "model_flops": flops_lib.train_flops(cfg, batch_size * seq_len, seq_len,
                                           batch_size * (seq_len // 4),
                                           0.0 if lora else 1.0),
      **_memory(compiled),
  }
  grads = _per_device_bytes(params, params_s)  # the trainable parameters' gradients
  rows = _rows_per_device(mesh, batch_size // accum_steps, seq_len)
  out["estimate_bytes"] = (out["params_bytes"] + out["opt_state_bytes"] + grads
                           + train_activation_bytes(cfg, rows, seq_len,
                                                    batch["score_pos"].shape[1], vocab_chunk))
  return out


def _memory(compiled) -> dict:
  """The compiled program's argument / output / alias / temporary bytes and their peak."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  out = dict(argument_bytes=int(mem.argument_size_in_bytes),
             output_bytes=int(mem.output_size_in_bytes),
             alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes))
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                       + out["temp_bytes"])
  return out


def _xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get("flops", 0.0))


def compile_decode(cfg: model_lib.ModelConfig, mesh, batch_size: int, prompt_len: int,
                   max_new_tokens: int) -> dict:
  """Lowers and compiles greedy decoding (`generate.decode`: prefill of [batch_size, prompt_len]
  into a KV cache of prompt_len + max_new_tokens slots, then the decode loop) for the model
  eval and negatives decode; returns its per-device memory and FLOPs figures. XLA counts the
  loop body once, so its FLOPs are the prefill's plus one decode step's."""
  graphdef, state = nnx.split(model_lib.abstract_model(cfg))
  state_s = sharding.state_shardings(state, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  prompt = jax.ShapeDtypeStruct((batch_size, prompt_len), jnp.int32)
  valid = jax.ShapeDtypeStruct((batch_size, prompt_len), jnp.bool_)
  batch_s = sharding.batch_sharding(prompt.shape, mesh)
  eos = jax.ShapeDtypeStruct((max(len(cfg.eos_token_ids), 1),), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  fn = lambda state, prompt, valid, eos, pad, key: generate.decode(  # pylint: disable=unnecessary-lambda-assignment
      graphdef, state, prompt, valid, eos, pad, key, max_new_tokens, 0.0, 0)
  with sharding.use_mesh(mesh):
    compiled = jax.jit(fn, in_shardings=(state_s, batch_s, batch_s, replicated, replicated,
                                         replicated), out_shardings=replicated).lower(
        state, prompt, valid, eos, jax.ShapeDtypeStruct((), jnp.int32), key).compile()
  tokens = batch_size * (prompt_len + max_new_tokens)
  params_bytes = _per_device_bytes(state, state_s)
  rows = _rows_per_device(mesh, batch_size, prompt_len)
  return {"params_bytes": params_bytes, "opt_state_bytes": 0,
          "xla_flops_per_device": _xla_flops(compiled),
          "model_flops": 2.0 * cfg.num_params * tokens, **_memory(compiled),
          "estimate_bytes": params_bytes + decode_activation_bytes(cfg, rows, prompt_len,
                                                                   max_new_tokens)}


def format_report(report: dict, budget_gib: float = 0.0) -> str:
  n = report["params"]
  size = f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"
  lines = [f"compile: {size} params, mesh {report['mesh']} on "
           f"{report['devices']} x {report['device_kind']}, sequence {report['seq_len']}, "
           f"vocabulary {report['vocab_size']:,} ({report['vocab_source']})",
           "| program | params GiB | opt state GiB | XLA args GiB | XLA temp GiB | XLA peak GiB "
           "| analytic peak GiB | XLA TFLOP/device | model TFLOP/step |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, s in report["steps"].items():
    g = lambda key: f"{s.get(key, float('nan')) / GIB:.3f}"  # pylint: disable=cell-var-from-loop,unnecessary-lambda-assignment
    lines.append(f"| {name} | {g('params_bytes')} | {g('opt_state_bytes')} | "
                 f"{g('argument_bytes')} | {g('temp_bytes')} | {g('peak_bytes')} | "
                 f"{g('estimate_bytes')} | {s['xla_flops_per_device'] / 1e12:.3f} | "
                 f"{s['model_flops'] / 1e12:.3f} |")
  if budget_gib:
    lines.append(f"HBM budget per device: {budget_gib:g} GiB")
  return "\n".join(lines)
