r"""SFT learning curve: greedy ValidRatio / HitRatio@1 on test examples every K steps.

  python benchmarks/sft_curve.py --config=configs/synthetic_scratch.py --steps=900 --every=150 \
      --config.sft.optim.learning_rate=2e-3

Trains the config's SFT model in-process (no checkpoints) and prints one line per evaluation: the
question it answers is "does this model learn to answer with a candidate title, and how fast?".

`--random_target_steps=N` trains the first N steps on a uniformly random candidate of each prompt
instead of the target (one draw per example, seeded): a pure copy task, with no preference to
learn, that isolates how fast the model learns to answer with some candidate.
`--config.sft.candidate_curriculum='((400,2),(800,5))'` trains on prompts with fewer candidates
first, as the sft stage does. `history_answers`: the share of answers that are a title from the
user's own history (invalid by construction: history items are never candidates).
"""

import os
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_integer("steps", 900, "SFT steps.")
flags.DEFINE_integer("every", 150, "Evaluate every this many steps.")
flags.DEFINE_integer("examples", 224, "Test examples per evaluation.")
flags.DEFINE_string("workdir", "", "Where the data stage writes (default: a temp dir).")
flags.DEFINE_integer("random_target_steps", 0, "Steps that answer a random candidate first.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from rosepo_jax import evaluation, pipeline, stages, train  # pylint: disable=g-import-not-at-top
  from rosepo_jax.data.batching import EncodedRow, encode_response  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  c = FLAGS.config
  c.eval.ranking = False
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="sft_curve_")
  pipeline.run_data(c, workdir)
  ds, tok = pipeline.open_dataset(c, workdir), pipeline.load_tokenizer(c, workdir)
  encoded = pipeline.encoded_examples(c, ds, tok, "train")
  rows = [EncodedRow(p, (r,)) for p, r in encoded]
  copy_rows = []  # built only when asked for: it encodes a response per training example
  if FLAGS.random_target_steps > 0:
    rng = np.random.default_rng(int(c.data.seed))
    copy_rows = [EncodedRow(p, (encode_response(tok, rng.choice(ex.candidate_titles)),))
                 for (p, _), ex in zip(encoded, ds.examples("train"))]
  trainer = train.Trainer(stages.build_model(c, tok), train.sft_loss_fn(int(c.vocab_chunk)),
                          train.make_optimizer(stages.optim_config(c.sft), FLAGS.steps))
  phases = stages.curriculum_phases(c, ds, tok)  # config.sft.candidate_curriculum
  sampler = stages._sampler(len(rows), c.sft, int(c.data.seed))  # pylint: disable=protected-access
  shape = stages.batch_shape(c)
  state, t0 = trainer.initial, time.time()
  while state.step < FLAGS.steps:
    source = (copy_rows if state.step < FLAGS.random_target_steps
              else stages.rows_at_step(phases, rows, state.step))
    batch = stages._local_batch(source, sampler, state.step, shape, 1)[1]  # pylint: disable=protected-access
    state, metrics = trainer.step(state, batch)
    if state.step % FLAGS.every == 0 or state.step == FLAGS.steps:
      figures, predictions = evaluation.evaluate_model(c, trainer.model(state.params), tok, ds,
                                                       "test", FLAGS.examples)
      examples = ds.examples("test", FLAGS.examples)
      from_history = sum(not p["valid"] and p["answer"] in ex.history_titles
                         for p, ex in zip(predictions, examples))
      print(f"step {state.step} loss {float(metrics['loss']):.3f} valid "
            f"{figures['valid_ratio']:.3f} hit@1 {figures['hit_ratio@1']:.3f} head "
            f"{figures['head_ratio']:.2f} history_answers {from_history / len(examples):.3f} "
            f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
