"""The export stage: a Hugging Face folder per run, loadable by transformers' Auto classes.

Reads config: export (dtype).
Consumes: data (the tokenizer), and the run's model unit (sft, or dpo/<method>).
Writes: DIR/export/<run>/ (safetensors, config.json, tokenizer files; LoRA runs were merged when
saved), atomically.
"""

from __future__ import annotations

import jax

from rosepo_jax import checkpoints
from rosepo_jax.workdir import Context, Paths, Stage, Unit, model_unit


def run(ctx: Context, unit: Unit) -> dict:
  folder = ctx.paths.export(unit.run)
  model = checkpoints.load_orbax(ctx.paths.model(unit.run))
  summary = {}
  if jax.process_index() == 0:
    summary = checkpoints.save_hf(model, folder, tokenizer=ctx.tokenizer,
                                  dtype=ctx.config.export.dtype or None)
  print(f"export {unit.run}: {folder}", flush=True)
  return summary


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  return [paths.export(unit.run)]


STAGE = Stage(name="export", sections=("export",),
              units=lambda config: [Unit("export", m) for m in config.methods],
              inputs=lambda config, unit: [Unit("data"), model_unit(unit.run)],
              outputs=_outputs, run=run)
