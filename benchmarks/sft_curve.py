r"""SFT learning curve: greedy ValidRatio / HitRatio@1 on validation examples every K steps.

  python benchmarks/sft_curve.py --config=configs/synthetic_scratch.py --steps=900 --every=150 \
      --config.sft.optim.learning_rate=2e-3

Trains the config's SFT model in-process (no checkpoints) on the SFT stage's rows and loss (the
history loss, the held-out users and hybrid item embeddings from the workdir's oracle included)
and prints one line per evaluation: the question it answers is "does this model learn to answer
with a candidate title, and how fast?".
Recipes are chosen on these curves, so they evaluate the validation split (`--split=val`, the
default); `--split=test` is for a final table of a recipe already chosen.

`--random_target_steps=N` trains the first N steps on a uniformly random candidate of each prompt
instead of the target (one draw per example, seeded): a pure copy task, with no preference to
learn, that isolates how fast the model learns to answer with some candidate.
`--config.sft.candidate_curriculum='((400,2),(800,5))'` trains on prompts with fewer candidates
first, as the sft stage does. `history_answers`: the share of answers that are a title from the
user's own history (invalid by construction: history items are never candidates).

`--eval_shown=10` also evaluates on prompts that show 10 of their candidates (the target among
them; valid = one of the shown titles). `--positions` prints how many valid answers name the
candidate at each position of the full prompt (0 = first). `--init_model=DIR` starts from a saved
model (an orbax model dir, e.g. a workdir's sft/model) at step `--start_step` (which sets the
curriculum phase and the sampler; the optimizer and its schedule, over steps - start_step, start
fresh); `--save_model=DIR` writes the final model, so runs can branch from one checkpoint:

  python benchmarks/sft_curve.py --config=configs/demo.py --steps=1200 --every=400 \
      --config.sft.candidate_curriculum='((400,2),(800,5),(1200,10))' --save_model=/tmp/m1200
  python benchmarks/sft_curve.py --config=configs/demo.py --init_model=/tmp/m1200 \
      --start_step=1200 --steps=2000 --every=200 --config.sft.optim.learning_rate=1.2e-3 \
      --config.sft.candidate_curriculum='((400,2),(800,5),(1200,10),(1600,15))'
"""

import os
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import backbone, checkpoints, generate, train
from rosepo_jax import config as config_lib
from rosepo_jax.data import candidates
from rosepo_jax.data.batching import EncodedRow
from rosepo_jax.stages import data as data_stage
from rosepo_jax.stages import eval as eval_stage
from rosepo_jax.stages import sft
from rosepo_jax.workdir import Context
# pylint: enable=g-import-not-at-top,wrong-import-position

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_integer("steps", 900, "SFT steps.")
flags.DEFINE_integer("every", 150, "Evaluate every this many steps.")
flags.DEFINE_integer("examples", 224, "Examples of --split per evaluation.")
flags.DEFINE_enum("split", "val", ["val", "test"], "The split the curve is measured on: val "
                  "(recipes are chosen on it) or test (a final table, once).")
flags.DEFINE_string("workdir", "", "Where the data stage writes (default: a temp dir).")
flags.DEFINE_integer("random_target_steps", 0, "Steps that answer a random candidate first.")
flags.DEFINE_list("eval_shown", [], "Also evaluate on prompts showing this many candidates.")
flags.DEFINE_bool("positions", False, "Print the candidate positions of the valid answers.")
flags.DEFINE_string("init_model", "", "Start from this orbax model dir instead of from scratch.")
flags.DEFINE_integer("start_step", 0, "The step the run starts at (with --init_model).")
flags.DEFINE_string("save_model", "", "Write the final model to this dir.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  FLAGS.config.eval.ranking = False
  ctx = Context(config_lib.parse(FLAGS.config),
                FLAGS.workdir or tempfile.mkdtemp(prefix="sft_curve_"))
  c = ctx.config
  data_stage.run(ctx)
  ds, codec = ctx.dataset, ctx.codec
  rows = sft.training_rows(ctx, "train", history=bool(c.sft.history_loss_weight))
  copy_rows = []  # built only when asked for: it encodes a response per training example
  if FLAGS.random_target_steps > 0:
    rng = np.random.default_rng(c.data.seed)
    copy_rows = [EncodedRow(p, (codec.encode_response(rng.choice(ex.candidate_titles)),))
                 for (p, _), ex in zip(ctx.encoded_examples("train"), ds.examples("train"))]
  model = (checkpoints.load_orbax(FLAGS.init_model) if FLAGS.init_model
           else backbone.build_model(c.model, codec, sft.item_table(ctx)))
  start = FLAGS.start_step
  if start >= FLAGS.steps:
    raise ValueError(f"--start_step={start} must be below --steps={FLAGS.steps}")
  trainer = train.Trainer(model, train.sft_loss_fn(c.vocab_chunk, c.sft.history_loss_weight),
                          train.make_optimizer(c.sft.optim, FLAGS.steps - start))
  phases = sft.curriculum_phases(ctx)  # config.sft.candidate_curriculum
  sampler = train.step_sampler(len(rows), c.sft.batch_size, c.data.seed + start)
  split = FLAGS.split
  examples, _ = ctx.sample(split, FLAGS.examples)  # the rows evaluate_model draws
  shown_sets = {}  # k -> (prompt ids, shown titles) per evaluated example
  for k in map(int, FLAGS.eval_shown):
    subsets = [candidates.curriculum_subset(ex.candidate_titles, ex.target_title, k,
                                            c.data.seed, split, ex.index) for ex in examples]
    shown_sets[k] = (codec.encode_prompts(
        [ctx.example_pieces(split, ex, candidate_titles=sub)
         for ex, sub in zip(examples, subsets)]), subsets)

  def evaluate(state, loss):
    model = trainer.model(state.params)
    figures, predictions = eval_stage.evaluate_model(ctx, model, split, FLAGS.examples)
    from_history = sum(not p["valid"] and p["answer"] in ex.history_titles
                       for p, ex in zip(predictions, examples))
    line = (f"step {state.step + start} ({split}, {len(examples)} examples) loss {loss:.3f} "
            f"valid {figures['valid_ratio']:.3f} hit@1 "
            f"{figures['hit_ratio@1']:.3f} head {figures['head_ratio']:.2f} history_answers "
            f"{from_history / len(examples):.3f}")
    for k, (prompt_ids, subsets) in shown_sets.items():
      answers = generate.greedy_answers(model, codec, prompt_ids, c.eval.batch_size,
                                        c.eval.max_new_tokens)
      valid = np.mean([a in sub for a, sub in zip(answers, subsets)])
      hit = np.mean([a == ex.target_title for a, ex in zip(answers, examples)])
      history = np.mean([a in ex.history_titles for a, ex in zip(answers, examples)])
      line += f" | shown {k}: valid {valid:.3f} hit@1 {hit:.3f} history_answers {history:.3f}"
    print(f"{line} ({time.time() - t0:.0f} s)", flush=True)
    if FLAGS.positions:
      counts = np.zeros(c.data.num_candidates, int)
      for p in predictions:
        if p["valid"]:
          counts[p["candidates"].index(p["answer"])] += 1
      print(f"  valid answers by candidate position: {counts.tolist()}", flush=True)

  state, t0, loss = trainer.initial, time.time(), float("nan")
  if FLAGS.init_model:
    evaluate(state, loss)
  while state.step + start < FLAGS.steps:
    step = state.step + start
    source = (copy_rows if step < FLAGS.random_target_steps
              else sft.rows_at_step(phases, rows, step))
    batch = sampler.local_batch(source, state.step, ctx.batch_shape, 1)[1]
    state, metrics = trainer.step(state, batch)
    loss = float(metrics["loss"])
    if (state.step + start) % FLAGS.every == 0 or state.step + start == FLAGS.steps:
      evaluate(state, loss)
  if FLAGS.save_model:
    train.save_trained(trainer, state, FLAGS.save_model, codec)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
