"""The export stage: a Hugging Face folder per run, loadable by transformers' Auto classes.

Reads config: export (dtype), model (for a LoRA SFT run's base).
Consumes: data (the tokenizer), and the run's model unit (sft, or dpo/<method>).
Writes: DIR/export/<run>/ (safetensors, config.json, tokenizer files; LoRA runs were merged when
saved), atomically. A LoRA run also gets DIR/export/<run>/adapter/, its adapters as a PEFT folder
whose base (adapter_config.json's base_model_name_or_path) is the HF folder they apply to: for a
preference method the SFT model's export, DIR/export/sft; for SFT the backbone's HF folder, or,
when the backbone is not one (from scratch, GGUF, orbax) or lacks the title tokens' rows, its
export in DIR/export/sft/base/ (title rows at their initial values; the adapter carries the
trained ones; with hybrid item embeddings its head is untied and the adapter's input rows hold
the projected item embeddings).
"""

from __future__ import annotations

import dataclasses

from rosepo_jax import backbone, checkpoints, files, multihost
from rosepo_jax import model as model_lib
from rosepo_jax.checkpoints import atomic, peft
from rosepo_jax.workdir import Context, Paths, Stage, Unit, model_unit


def _adapter_base(ctx: Context, run: str) -> str:
  """The HF folder a run's adapters apply to (exporting the SFT backbone when it is not one)."""
  if run != "sft":
    return files.absolute(ctx.paths.export("sft"))
  m = ctx.config.model
  init = checkpoints.resolve_model_path(m.init) if m.init != "scratch" else ""
  if init and files.isfile(files.join(init, "config.json")) and not ctx.codec.item_tokens:
    return files.absolute(init)
  folder = files.join(ctx.paths.export("sft"), "base")
  base = backbone.build_model(dataclasses.replace(m, lora_rank=0, item_embeddings="none"),
                              ctx.codec)
  if m.item_embeddings == "oracle":  # the adapter's input and output title rows differ
    base = model_lib.untie_head(base)
  checkpoints.save_hf(base, folder, tokenizer=ctx.codec)
  return files.absolute(ctx.paths.published(folder))  # where it lies once the unit is swapped in


def run(ctx: Context, unit: Unit) -> dict:
  """Writes the run's HF folder (and its adapter folder); every process of a multi-process job
  takes part (the weights are gathered), the leader writes."""
  folder = ctx.paths.export(unit.run)
  model = checkpoints.load_orbax(ctx.paths.model(unit.run), mesh=ctx.mesh())
  summary = checkpoints.save_hf(model, folder, tokenizer=ctx.codec,
                                dtype=ctx.config.export.dtype or None)
  adapter = ctx.paths.adapter(unit.run)
  if files.isdir(adapter):
    base = _adapter_base(ctx, unit.run)
    with atomic.atomic_dir(files.join(folder, "adapter")) as tmp:
      if multihost.is_leader():
        for name in (peft.ADAPTER_CONFIG, peft.ADAPTER_WEIGHTS):
          files.copy(files.join(adapter, name), files.join(tmp, name))
        peft.set_base(tmp, base)
  r = summary["rounding"]
  print(f"export {unit.run}: {ctx.paths.published(folder)} ({summary['dtype']}; rounding: max abs error "
        f"{r['max_abs_error']:.3g}, max relative {r['max_relative_error']:.3g}, "
        f"{r['elements_changed']:.1%} of elements changed)", flush=True)
  return summary


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  return [paths.export(unit.run)]


STAGE = Stage(name="export", sections=("export", "model.init"),
              units=lambda config: [Unit("export", m) for m in config.methods],
              inputs=lambda config, unit: [Unit("data"), model_unit(unit.run)],
              outputs=_outputs, run=run, per_seed=True)
