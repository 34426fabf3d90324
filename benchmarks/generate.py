r"""Greedy decoding tokens/s: our jitted KV-cache decoder vs transformers' `generate`.

  python benchmarks/generate.py                      # batch 32, prompts ~300 tokens, 16 new tokens
  python benchmarks/generate.py --batch=8 --new_tokens=32

Both sides decode the same left-padded prompts (lengths 280..320, random tokens) greedily from the
same weights (ours exported to an HF folder, loaded by transformers), in fp32, with the cache, for
exactly `new_tokens` tokens (no EOS). Timed: prefill + decoding, from token ids to token ids.
Rounds alternate ours/theirs; the median of each is reported, plus how many generated tokens agree.
Last line: one JSON object with the figures.
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_integer("batch", 32, "Prompts per call.")
flags.DEFINE_integer("prompt", 300, "Mean prompt length (lengths vary by +-20).")
flags.DEFINE_integer("new_tokens", 16, "Tokens generated per prompt.")
flags.DEFINE_integer("hidden", 256, "Hidden size.")
flags.DEFINE_integer("layers", 4, "Decoder blocks.")
flags.DEFINE_integer("vocab", 8192, "Vocabulary size.")
flags.DEFINE_integer("repeats", 5, "Timed calls per side (after 1 warm-up call).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from rosepo_jax import generate  # pylint: disable=g-import-not-at-top
  import twins  # pylint: disable=g-import-not-at-top

  pad = 0
  ours, theirs = twins.llama_pair(FLAGS.hidden, FLAGS.layers, FLAGS.vocab, pad_token_id=pad)
  cfg = ours.cfg
  theirs.eval()
  rs = np.random.RandomState(0)
  prompts = [rs.randint(1, cfg.vocab_size, rs.randint(FLAGS.prompt - 20, FLAGS.prompt + 21))
             for _ in range(FLAGS.batch)]
  tokens, valid = generate.left_pad(prompts, pad)
  tokens_t, mask_t = torch.tensor(tokens, dtype=torch.long), torch.tensor(valid, dtype=torch.long)
  n = FLAGS.new_tokens

  def run_ours():
    t = time.perf_counter()
    out = generate.greedy_generate(ours, tokens, valid, n, eos_ids=(-1,))
    return time.perf_counter() - t, out

  def run_theirs():
    t = time.perf_counter()
    with torch.no_grad():
      out = theirs.generate(input_ids=tokens_t, attention_mask=mask_t, do_sample=False,
                            max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                            pad_token_id=pad, use_cache=True)
    return time.perf_counter() - t, out[:, tokens.shape[1]:].numpy()

  run_ours()  # compile
  run_theirs()
  ours_times, theirs_times = [], []
  for _ in range(FLAGS.repeats):
    dt, ours_out = run_ours()
    ours_times.append(dt)
    dt, theirs_out = run_theirs()
    theirs_times.append(dt)
  agree = float((ours_out == theirs_out).mean())
  generated = FLAGS.batch * n
  ours_tps = generated / statistics.median(ours_times)
  theirs_tps = generated / statistics.median(theirs_times)
  print(f"config: {cfg.num_params / 1e6:.2f}M params, batch {FLAGS.batch}, prompts "
        f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, {n} new tokens, fp32, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
  print(f"generated tokens equal: {agree:.4f}")
  print(f"ours:         {ours_tps:10.1f} new tokens/s (median of {FLAGS.repeats})")
  print(f"transformers: {theirs_tps:10.1f} new tokens/s")
  print(f"ratio ours/transformers: {ours_tps / theirs_tps:.2f}x")
  print(json.dumps({"benchmark": "generate", "ours_tokens_per_s": round(ours_tps, 1),
                    "transformers_tokens_per_s": round(theirs_tps, 1),
                    "ratio": round(ours_tps / theirs_tps, 3), "tokens_equal": agree,
                    "batch": FLAGS.batch, "new_tokens": n, "params": cfg.num_params,
                    "platform": jax.devices()[0].platform}))


if __name__ == "__main__":
  app.run(main)
