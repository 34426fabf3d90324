"""The sft stage: supervised fine-tuning on (prompt, target title + EOS); the result is pi_ref.

Reads config: model, sft, vocab_chunk, preference.prompts and preference.held_out_share (and
data through its unit); a pretrained `model.init` from outside DIR (its content fingerprint is
part of the unit's key).
Consumes: data (dataset, tokenizer); with `config.model.item_embeddings="oracle"` also oracle
(the all-users SASRec oracle's item embeddings, frozen, under the title tokens' embeddings).
Writes: DIR/sft/{checkpoints,tb,metrics.jsonl}, DIR/sft/model (orbax model dir + tokenizer, LoRA
merged in float32; with `config.sft.keep="best"`, the default, the evaluated step of the lowest
validation loss, else the last step) and, with LoRA, DIR/sft/adapter (the adapters alone, a PEFT folder).

With `config.preference.prompts="held_out"`, SFT trains on the training users outside the
held-out share (`Context.held_out_users`), whose prompts the negatives and preference stages use.
With `config.sft.candidate_curriculum`, the first steps train on prompts that show fewer
candidates (`curriculum_phases`). With `config.sft.history_loss_weight` > 0 (titles as tokens),
SFT also predicts each history title from the prompt before it (`history_targets`): a dense,
SASRec-like signal from every position of the history, not one answer per prompt. Validation
loss is the answer's alone.
"""

from __future__ import annotations

import numpy as np

from rosepo_jax import backbone, checkpoints, files, train
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.config import ConfigError
from rosepo_jax.errors import InputError
from rosepo_jax.data import candidates as candidates_lib
from rosepo_jax.data.batching import EncodedRow
from rosepo_jax.workdir import Context, Paths, Stage, Unit, fingerprint, single_unit


def history_targets(prompt: tuple[int, ...], history: tuple[int, ...], title_offset: int
                    ) -> tuple[int, ...]:
  """The prompt positions of the history's title tokens after the first (titles as tokens):
  each is predicted from the prompt before it, as SASRec predicts a user's next item from the
  items before. History items are never candidates, so their tokens are told apart."""
  items = set(history)
  positions = [k for k, t in enumerate(prompt) if t - title_offset in items]
  return tuple(positions[1:])


def training_rows(ctx: Context, split: str, history: bool = False) -> list[EncodedRow]:
  """One row (prompt, (target response,)) per example of `split`; with `history`, its history
  titles as prompt targets too (`history_targets`). The training split leaves out the users
  held out for the preference prompts (`Context.held_out_users`)."""
  held_out = ctx.held_out_users() if split == "train" else set()
  offset = ctx.codec.title_offset
  return [EncodedRow(p, (r,), history_targets(p, ex.history, offset) if history else ())
          for (p, r), ex in zip(ctx.encoded_examples(split), ctx.dataset.examples(split))
          if ex.user not in held_out]


def curriculum_phases(ctx: Context) -> list[tuple[int, list[EncodedRow]]]:
  """(end step, training rows) for each phase of `config.sft.candidate_curriculum`.

  The curriculum is a tuple of (end_step, shown) pairs (validated by `rosepo_jax.config`):
  before `end_step`, each training prompt shows `shown` of its candidates (the target among
  them, `candidates.curriculum_subset`) and says so ("which one of these {n}"); from the last end
  step on, the full prompts. Few candidates make copying a candidate's title easy to discover; a
  from-scratch model learns it several times faster this way than from the full prompts
  (docs/findings.md).
  """
  seed = ctx.config.data.seed
  held_out = ctx.held_out_users()
  kept = [(ex, r) for ex, (_, r) in zip(ctx.dataset.examples("train"),
                                        ctx.encoded_examples("train")) if ex.user not in held_out]
  examples, responses = [ex for ex, _ in kept], [r for _, r in kept]
  history = bool(ctx.config.sft.history_loss_weight)
  out = []
  for end, shown in ctx.config.sft.candidate_curriculum:
    pieces = [ctx.example_pieces("train", ex, candidate_titles=(
        candidates_lib.curriculum_subset(ex.candidate_titles, ex.target_title, shown, seed,
                                         "train", ex.index))) for ex in examples]
    prompts = ctx.codec.encode_prompts(pieces)
    out.append((end, [EncodedRow(p, (r,), history_targets(p, ex.history, ctx.codec.title_offset)
                                 if history else ())
                      for p, r, ex in zip(prompts, responses, examples)]))
  return out


def item_table(ctx: Context) -> np.ndarray | None:
  """The all-users oracle's item embeddings [items, dim] (float32) for hybrid item embeddings
  (`config.model.item_embeddings="oracle"`), else None."""
  if ctx.config.model.item_embeddings != "oracle":
    return None
  return oracle_lib.load_oracle(ctx.paths.oracle_model).item_embeddings()


def rows_at_step(phases: list[tuple[int, list[EncodedRow]]], rows: list[EncodedRow],
                 step: int) -> list[EncodedRow]:
  """The training rows of `step`: its curriculum phase's, or the full `rows` after the last."""
  return next((phase_rows for end, phase_rows in phases if step < end), rows)


def run(ctx: Context, unit: Unit | None = None) -> dict:
  """Trains the SFT model; returns the last validation metrics."""
  del unit
  config, section = ctx.config, ctx.config.sft
  rows = training_rows(ctx, "train", history=bool(section.history_loss_weight))
  phases = curriculum_phases(ctx)
  val = training_rows(ctx, "val")[:section.eval_examples]  # the answer's loss alone
  loss_fn = train.sft_loss_fn(config.vocab_chunk, section.history_loss_weight)
  trainer = train.Trainer(backbone.build_model(config.model, ctx.codec, item_table(ctx)), loss_fn,
                          train.make_optimizer(section.optim, section.steps),
                          mesh=ctx.mesh(), accum_steps=section.accum_steps)
  sampler = train.step_sampler(len(rows), section.batch_size, config.data.seed + config.model.seed)
  evaluate = train.loss_evaluator(trainer, loss_fn, val, ctx.batch_shape, 1,
                                  section.batch_size) if val else None
  state, metrics = train.train_loop(
      trainer,
      lambda step: sampler.local_batch(rows_at_step(phases, rows, step), step, ctx.batch_shape,
                                       1)[1],
      section.loop(best_metric="loss" if evaluate else ""), ctx.paths.run("sft"), evaluate,
      batch_flops=train.batch_flops_fn(trainer.model_cfg, bool(config.model.lora_rank)))
  steps = state.step
  if section.keep == "best" and evaluate:
    checkpoints_dir = files.join(ctx.paths.run("sft"), "checkpoints")
    best = train.best_step(checkpoints_dir, "loss", "min")
    if best is not None and best != state.step:
      state = train.restore_latest(checkpoints_dir, state, step=best)
  train.save_trained(trainer, state, ctx.paths.model("sft"), ctx.codec,
                     ctx.paths.adapter("sft"))
  print(f"sft: {steps} steps, validation {metrics}; kept step {state.step} "
        f"({section.keep if evaluate else 'last'})", flush=True)
  return metrics


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  del unit
  return [paths.run("sft")]


def _key_extra(config, unit: Unit):
  """The pretrained checkpoint SFT starts from (outside DIR), by content; and the share of
  training users it leaves out for the preference prompts."""
  del unit
  init = config.model.init
  backbone_print = None if init == "scratch" else fingerprint(
      [checkpoints.resolve_model_path(init)])
  p = config.preference
  return {"backbone": backbone_print,
          "held_out_share": p.held_out_share if p.prompts == "held_out" else 0.0}


def check(config) -> None:
  """A pretrained `model.init` is a model on this machine, and its architecture takes the
  configured LoRA and dtypes."""
  if config.model.init != "scratch":
    checkpoints.check_model_path(config.model.init, "config.model.init")
  try:
    backbone.architecture(config.model)
  except ValueError as e:
    if isinstance(e, InputError):
      raise
    raise ConfigError(f"config.model: {e}") from None


def _inputs(config, unit: Unit) -> list[Unit]:
  del unit
  return [Unit("data")] + ([Unit("oracle")] if config.model.item_embeddings == "oracle" else [])


STAGE = Stage(name="sft", sections=("model", "sft", "vocab_chunk"), units=single_unit("sft"),
              inputs=_inputs, outputs=_outputs, run=run,
              key_extra=_key_extra,
              required=lambda config, paths, unit: [paths.model("sft")], per_seed=True,
              check=check)
