r"""Forward+backward tokens/s: our Flax model vs transformers/torch, same config, same batch.

  python benchmarks/model_step.py                       # defaults: ~8M-param Llama, batch 8x256
  python benchmarks/model_step.py --batch=4 --seq=512 --repeats=5

Both sides compute the mean next-token cross-entropy and its gradient w.r.t. every parameter,
in fp32, from the same weights (ours exported to an HF folder, loaded by transformers). Rounds
alternate ours/theirs so both see the same machine state; the median step time of each is
reported. Last line: one JSON object with the figures.
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_integer("batch", 8, "Sequences per step.")
flags.DEFINE_integer("seq", 256, "Tokens per sequence.")
flags.DEFINE_integer("hidden", 256, "Hidden size.")
flags.DEFINE_integer("layers", 4, "Decoder blocks.")
flags.DEFINE_integer("vocab", 8192, "Vocabulary size.")
flags.DEFINE_integer("repeats", 10, "Timed steps per side (after 2 warm-up steps).")
flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from rosepo_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  import twins  # pylint: disable=g-import-not-at-top

  if FLAGS.torch_threads:
    torch.set_num_threads(FLAGS.torch_threads)
  ours, theirs = twins.llama_pair(FLAGS.hidden, FLAGS.layers, FLAGS.vocab,
                                  max_positions=max(4096, FLAGS.seq))
  cfg = ours.cfg
  theirs.train()
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (FLAGS.batch, FLAGS.seq))
  tokens_np = tokens.astype(np.int32)

  graphdef, state = nnx.split(ours)
  valid = jnp.ones(tokens.shape, bool)
  positions, mask = model_lib.positions_from_mask(valid), model_lib.causal_mask(valid)

  @jax.jit
  def ours_step(state, tokens):
    def loss_fn(state):
      logits, _ = nnx.merge(graphdef, state)(tokens, positions, mask)
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()
    return jax.value_and_grad(loss_fn)(state)

  tokens_t = torch.tensor(tokens, dtype=torch.long)

  def theirs_step():
    theirs.zero_grad(set_to_none=True)
    loss = theirs(input_ids=tokens_t, labels=tokens_t).loss
    loss.backward()
    return loss

  def time_ours():
    t = time.perf_counter()
    loss, grads = ours_step(state, tokens_np)
    jax.block_until_ready(grads)
    return time.perf_counter() - t, float(loss)

  def time_theirs():
    t = time.perf_counter()
    loss = theirs_step()
    return time.perf_counter() - t, loss.item()

  for _ in range(2):  # compile / warm up
    time_ours()
    time_theirs()
  ours_times, theirs_times = [], []
  for _ in range(FLAGS.repeats):
    dt, ours_loss = time_ours()
    ours_times.append(dt)
    dt, theirs_loss = time_theirs()
    theirs_times.append(dt)
  n_tokens = FLAGS.batch * FLAGS.seq
  ours_tps = n_tokens / statistics.median(ours_times)
  theirs_tps = n_tokens / statistics.median(theirs_times)
  print(f"config: {cfg.num_params / 1e6:.2f}M params, batch {FLAGS.batch} x {FLAGS.seq} tokens, "
        f"fp32, jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  print(f"loss: ours {ours_loss:.6f}  transformers {theirs_loss:.6f}")
  print(f"ours:         {ours_tps:10.0f} tokens/s (median of {FLAGS.repeats})")
  print(f"transformers: {theirs_tps:10.0f} tokens/s")
  print(f"ratio ours/transformers: {ours_tps / theirs_tps:.2f}x")
  print(json.dumps({"benchmark": "model_step", "ours_tokens_per_s": round(ours_tps, 1),
                    "transformers_tokens_per_s": round(theirs_tps, 1),
                    "ratio": round(ours_tps / theirs_tps, 3), "batch": FLAGS.batch,
                    "seq": FLAGS.seq, "params": cfg.num_params,
                    "platform": jax.devices()[0].platform}))


if __name__ == "__main__":
  app.run(main)
