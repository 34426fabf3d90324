"""The compile stage (a check, not part of "all"; never skipped, writes nothing): lowers and
compiles the SFT and preference train steps and greedy decoding (prefill + decode loop, at the
eval / negatives batch, for the merged model they decode) for the configured model, mesh and batch
sizes without weights or data, prints per-device memory and FLOPs (`rosepo_jax.aot`), and fails
when a program's peak exceeds `config.compile.hbm_gib`.

The model is sized to the tokenizer as SFT sizes it (title tokens included) when the data stage
has run in the workdir (its DIR/data/stats.json); before that, to the checkpoint's or preset's
vocabulary. The table's first line says which.

Reads config: model, mesh, sft, preference, methods (with their rows of `rosepo_jax.methods`),
negatives, eval, vocab_chunk, data.max_seq_len, compile.
Consumes: the data stage's DIR/data/stats.json when it exists. Writes: nothing.
"""

from __future__ import annotations

import jax

from rosepo_jax import aot, backbone, files, methods, sharding, train
from rosepo_jax import model as model_lib
from rosepo_jax.config import ConfigError
from rosepo_jax.workdir import Context, read_json


def _codec_vocab(ctx: Context) -> tuple[int, int, str]:
  """(ids of the data stage's tokenizer, title tokens included, or 0 before the data stage;
  how many of them are title tokens; where the model's vocabulary size comes from)."""
  if files.isfile(ctx.paths.data_stats):
    stats = read_json(ctx.paths.data_stats, "the data stage's stats")
    tok = stats["tokenizer"]
    titles = tok.get("title_tokens", 0)
    return tok["vocab_size"], titles, (f"sized to the tokenizer of {ctx.paths.data_stats} "
                                       f"({titles} title tokens)")
  return 0, 0, "the checkpoint's or preset's vocabulary (the data stage has not run here)"


def run(ctx: Context) -> dict:
  """Compiles the steps; prints the memory table; checks the HBM budget; returns the report."""
  config = ctx.config
  codec_vocab, title_tokens, vocab_source = _codec_vocab(ctx)
  cfg = backbone.architecture(config.model, codec_vocab, title_tokens)
  mesh = ctx.mesh() or sharding.make_mesh(data=1)
  seq_len = config.compile.seq_len or config.data.max_seq_len
  if not seq_len:
    raise ConfigError("config.compile.seq_len=0 and config.data.max_seq_len=0 (sized from the "
                      "data): the compile check runs without data; set config.compile.seq_len")
  budget = config.compile.hbm_gib
  online = config.preference.reference == "online"
  steps = {"sft": (train.sft_loss_fn(config.vocab_chunk), config.sft, 1, False, False)}
  if config.trained_runs:  # the preference step with the most rejected responses per prompt
    run_name = max(config.trained_runs, key=config.num_rejected)
    k = config.num_rejected(run_name)
    objective = methods.objective(config.method(run_name), config.preference.rosepo_form)
    steps["preference"] = (train.preference_loss_fn(objective, k, config.preference.beta,
                                                    config.vocab_chunk),
                           config.preference, k + 1, True, online)
  decode_batch = max([config.eval.batch_size] + [config.negatives.batch_size for r in
                                                  config.trained_runs if config.uses_negatives(r)])
  new_tokens = max(config.eval.max_new_tokens, config.negatives.max_new_tokens)
  report = {"mesh": dict(mesh.shape), "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "params": cfg.num_params,
            "vocab_size": cfg.vocab_size, "vocab_source": vocab_source,
            "seq_len": seq_len, "steps": {}}
  for name, (loss_fn, section, responses, preference, online_ref) in steps.items():
    optimizer = train.make_optimizer(section.optim, section.steps)
    report["steps"][name] = aot.compile_step(cfg, loss_fn, optimizer, mesh, section.batch_size,
                                             seq_len, responses, preference, section.accum_steps,
                                             online_ref, config.vocab_chunk)
  report["steps"]["decode"] = aot.compile_decode(model_lib.merged_config(cfg), mesh, decode_batch,
                                                 seq_len, new_tokens)
  print(aot.format_report(report, budget), flush=True)
  # XLA:CPU's temporary bytes do not model an accelerator's memory (its schedule keeps every
  # block's activations live with or without remat: launch/README.md), so with fake CPU devices
  # the budget is checked against the analytic peak; on TPU / GPU against XLA's.
  figure = "estimate_bytes" if jax.default_backend() == "cpu" else "peak_bytes"
  over = {n: s[figure] / aot.GIB for n, s in report["steps"].items()
          if budget and s.get(figure, 0) / aot.GIB > budget}
  if over:
    raise MemoryError(
        f"compile: per-device memory ({'analytic' if figure == 'estimate_bytes' else 'XLA'} "
        f"peak) exceeds config.compile.hbm_gib={budget:g} GiB for "
        + ", ".join(f"{n} ({g:.2f} GiB)" for n, g in over.items())
        + "; use more devices (config.mesh.fsdp), a smaller batch or accum_steps, "
        "model.remat=True or LoRA")
  return report
