r"""Preference train-step throughput: ours vs trl's DPOTrainer, same model, data and batch.

  pip install -e ".[bench]"      # benchmark-only dependencies (trl)
  python benchmarks/preference_step.py [--prompts_per_step=8] [--steps=12]

Both sides train the same Llama-shaped model (ours, exported to an HF folder for trl) on the same
synthetic-world prompts (~140 tokens) with title responses, with reference log-probs
precomputed (trl: ``precompute_ref_log_probs=True``), fp32, AdamW. DPO uses k=1 rejected
response per prompt; S-DPO k=3, which trl trains as 3 (chosen, rejected_j) pairs per prompt, as a
trl user would. Throughput counts preference pairs per second (a prompt with k rejected = k
pairs), from the median step time after warm-up. Last line: one JSON object.
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_integer("prompts_per_step", 8, "Prompts per train step.")
flags.DEFINE_integer("steps", 12, "Timed steps per side (after 3 warm-up steps).")
flags.DEFINE_integer("hidden", 128, "Hidden size of the benchmark model.")
flags.DEFINE_integer("layers", 4, "Decoder blocks.")
flags.DEFINE_integer("vocab", 8192, "Model vocabulary (configs/lastfm.py's BPE has 8192 tokens; "
                     "ids beyond the benchmark tokenizer's are simply never used).")
FLAGS = flags.FLAGS


def _synthetic_rows(n, k):
  """n (prompt, chosen title, k rejected titles) triples from the synthetic world."""
  from rosepo_jax import negatives  # pylint: disable=g-import-not-at-top
  from rosepo_jax.data import prompts, synthetic  # pylint: disable=g-import-not-at-top
  from rosepo_jax.data.candidates import sample_candidates  # pylint: disable=g-import-not-at-top
  raw = synthetic.build_world(synthetic.WorldConfig(), seed=0)
  out = []
  for index, w in enumerate(raw.splits["train"][:n]):
    cands = sample_candidates(raw.num_items, w.history, w.target, 20, 0, "train", index)
    text = prompts.render_prompt(prompts.DEFAULT_TEMPLATES["items"]["comma"],
                                 [raw.titles[i] for i in w.history], [raw.titles[i] for i in cands])
    rejected = negatives.random_rejected(cands, w.target, k, 0, "train", index)
    out.append((text, raw.titles[w.target], [raw.titles[i] for i in rejected]))
  return out, raw


def _train_bpe(raw):
  from rosepo_jax.data import prompts, tokenizer  # pylint: disable=g-import-not-at-top
  texts = [prompts.response_text(t) for t in raw.titles] * 3
  texts += ["This user has interacted with these items, oldest first: Candidates: Which one of "
            "these items will the user choose next? Answer:"] * 50
  return tokenizer.train_bpe(texts, 600)


def bench_ours(model_cfg, rows, tok, k, steps):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rosepo_jax import methods, model as model_lib, train  # pylint: disable=g-import-not-at-top
  from rosepo_jax.data import batching  # pylint: disable=g-import-not-at-top
  from rosepo_jax.data.codec import Codec  # pylint: disable=g-import-not-at-top

  codec = Codec(tok)
  encoded = [batching.EncodedRow(
      tuple(tok(p, add_special_tokens=False)["input_ids"]),
      (codec.encode_response(c),) + tuple(codec.encode_response(r) for r in rej))
             for p, c, rej in rows]
  method = "dpo" if k == 1 else "sdpo"
  trainer = train.Trainer(model_lib.init_model(model_cfg, seed=0),
                          train.preference_loss_fn(methods.get(method).objective, k, beta=0.1,
                                                   vocab_chunk=8192),
                          train.make_optimizer(train.OptimConfig(learning_rate=1e-6), 1000))
  n = FLAGS.prompts_per_step
  sampler = batching.StepSampler(len(encoded), n, seed=0)
  shape = batching.BatchShape(max_seq_len=1024)
  rs = np.random.RandomState(0)
  ref = rs.normal(-20, 2, (len(encoded), k + 1)).astype(np.float32)

  def batch(step):
    idx = sampler.global_indices(step)
    b = batching.make_batch([encoded[i] for i in idx], shape, k + 1)
    b["ref_logps"], b["eps"] = ref[idx], np.zeros((n, k), np.float32)
    return b

  state, times = trainer.initial, []
  for step in range(steps + 3):
    b = batch(step)
    t = time.perf_counter()
    state, metrics = trainer.step(state, b)
    jax.block_until_ready(metrics)
    if step >= 3:
      times.append(time.perf_counter() - t)
  return statistics.median(times)


def bench_trl(hf_dir, rows, tok, k, steps):
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top

  pairs = [{"prompt": p, "chosen": " " + c, "rejected": " " + r} for p, c, rej in rows for r in rej]
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  times = []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
      self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      times.append(time.perf_counter() - self.t)

  with tempfile.TemporaryDirectory() as out:
    # fp32 and no activation checkpointing, like our side. (trl's defaults, bf16=True and
    # gradient_checkpointing=True, run bf16 autocast on CPU: 14x slower here, not a fair peer.)
    cfg = trl.DPOConfig(output_dir=out, per_device_train_batch_size=FLAGS.prompts_per_step * k,
                        max_steps=steps + 3, learning_rate=1e-6, beta=0.1, logging_steps=1000,
                        report_to="none", save_strategy="no", precompute_ref_log_probs=True,
                        use_cpu=True, bf16=False, gradient_checkpointing=False,
                        dataloader_num_workers=0, max_length=1024)
    trainer = trl.DPOTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(pairs),
                             processing_class=tok, callbacks=[Timer()])
    trainer.train()
  return statistics.median(times[3:])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top
  from rosepo_jax import checkpoints, model as model_lib  # pylint: disable=g-import-not-at-top

  result = {"benchmark": "preference_step"}
  steps, n = FLAGS.steps, FLAGS.prompts_per_step
  for k in (1, 3):
    rows, raw = _synthetic_rows(n * (steps + 3), k)
    tok = _train_bpe(raw)
    cfg = model_lib.get_config(
        "tiny", vocab_size=max(FLAGS.vocab, -(-len(tok) // 64) * 64), hidden_size=FLAGS.hidden,
        intermediate_size=FLAGS.hidden * 3, num_layers=FLAGS.layers, num_heads=4, num_kv_heads=2,
        head_dim=FLAGS.hidden // 4, eos_token_ids=(tok.eos_token_id,),
        pad_token_id=tok.pad_token_id, bos_token_id=None)
    with tempfile.TemporaryDirectory() as hf_dir:
      checkpoints.save_hf(model_lib.init_model(cfg, seed=0), hf_dir + "/m", tokenizer=tok)
      theirs = bench_trl(hf_dir + "/m", rows, tok, k, steps)
    ours = bench_ours(cfg, rows, tok, k, steps)
    pairs = n * k
    result[f"ours_pairs_per_s_k{k}"] = round(pairs / ours, 2)
    result[f"trl_pairs_per_s_k{k}"] = round(pairs / theirs, 2)
    result[f"ratio_k{k}"] = round(theirs / ours, 3)
    print(f"k={k}: {n} prompts x {k} rejected per step | ours {pairs / ours:8.1f} pairs/s | "
          f"trl DPOTrainer {pairs / theirs:8.1f} pairs/s | ratio {theirs / ours:.2f}x", flush=True)
  result.update(vocab=cfg.vocab_size, params=cfg.num_params)
  print(f"model: {cfg.num_params / 1e6:.2f}M params (hidden {FLAGS.hidden}, {FLAGS.layers} layers, "
        f"vocab {cfg.vocab_size})"
        f", jax {jax.__version__}, torch {torch.__version__}, trl {trl.__version__}")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
