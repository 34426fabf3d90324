"""The eval stage (METHOD.md section 6): greedy answers and candidate ranking for each run.

For every run in config.methods (``sft`` = DIR/sft/model, others DIR/<method>/model) it writes
  DIR/eval/<run>.json              the aggregate figures (metrics.generation_metrics keys plus
                                   metrics.ranking_metrics keys), split, seconds, and the same
                                   figures per eval subset of the split ("subsets", e.g. LastFM's
                                   llara_last: LLaRA's 122 one-row-per-user rows)
  DIR/eval/<run>.predictions.jsonl one line per example: prompt (the exact text fed to the model),
                                   candidates, target, answer (decoded, stripped), valid, hit
                                   (plus valid_substring and the item ids answer_item, target_item)
so anyone can audit or recompute the figures from the predictions alone.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
import time

import jax
import numpy as np

from rosepo_jax import checkpoints, generate, metrics, pipeline
from rosepo_jax.data.batching import BatchShape, EncodedRow, encode_response


def greedy_answers(model, tok, prompt_ids: Sequence[Sequence[int]], batch_size: int,
                   max_new_tokens: int) -> list[str]:
  """Greedy answers (decoded up to EOS, stripped) of `model` to each prompt.

  Prompts are left-padded to a multiple of 32 tokens and chunks are filled up to `batch_size`
  (repeating the last prompt), so few shapes are ever compiled.
  """
  answers = []
  eos = model.cfg.eos_token_ids
  for start in range(0, len(prompt_ids), batch_size):
    chunk = list(prompt_ids[start:start + batch_size])
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)
    length = -(-max(len(p) for p in chunk) // 32) * 32
    tokens, valid = generate.left_pad(chunk, tok.pad_token_id, length)
    out = generate.greedy_generate(model, tokens, valid, max_new_tokens)
    answers += [tok.decode(generate.trim_at_eos(row.tolist(), eos)).strip() for row in out[:real]]
  return answers


def candidate_rows(tok, encoded, examples, titles: Sequence[str]) -> list[EncodedRow]:
  """One row per example: its prompt ids and every candidate's response ids (title + EOS)."""
  title_ids = {}
  rows = []
  for (prompt, _), ex in zip(encoded, examples):
    responses = []
    for c in ex.candidates:
      if c not in title_ids:
        title_ids[c] = encode_response(tok, titles[c])
      responses.append(title_ids[c])
    rows.append(EncodedRow(prompt, tuple(responses)))
  return rows


def _figures(answers, examples, scores_NxC, popularity) -> tuple[dict, list[dict]]:
  """METHOD.md section 6 figures (+ ranking when `scores_NxC` is given) and per-example records."""
  figures, records = metrics.generation_metrics(
      answers, [ex.candidate_titles for ex in examples], [ex.candidates for ex in examples],
      [ex.target for ex in examples], popularity)
  if scores_NxC is not None:
    target_pos = np.array([ex.candidates.index(ex.target) for ex in examples])
    figures.update(metrics.ranking_metrics(scores_NxC, target_pos))
  return figures, records


def evaluate_model(config, model, tok, ds, split: str, limit: int = 0
                   ) -> tuple[dict, list[dict]]:
  """Figures and per-example predictions of `model` on `split` (first `limit` examples if > 0).

  When the dataset defines eval subsets of `split` (e.g. LLaRA's one-row-per-user rows),
  ``figures["subsets"][name]`` holds the same figures over the subset's evaluated examples.
  """
  section = config.eval
  examples = ds.examples(split, limit)
  encoded = pipeline.encoded_examples(config, ds, tok, split, limit)
  answers = greedy_answers(model, tok, [p for p, _ in encoded], int(section.batch_size),
                           int(section.max_new_tokens))
  scores = None
  if section.get("ranking", True):
    scores = generate.score_responses(
        model, candidate_rows(tok, encoded, examples, ds.titles),
        batch_size=max(int(section.batch_size) // 4, 1),
        shape=BatchShape(max_seq_len=int(config.data.max_seq_len)),
        vocab_chunk=int(config.vocab_chunk))
  figures, records = _figures(answers, examples, scores, ds.train_popularity)
  position = {ex.index: k for k, ex in enumerate(examples)}
  for name, indices in ds.eval_subsets.get(split, {}).items():
    rows = [position[i] for i in indices if i in position]
    if rows:
      figures.setdefault("subsets", {})[name] = _figures(
          [answers[k] for k in rows], [examples[k] for k in rows],
          None if scores is None else scores[rows], ds.train_popularity)[0]
  predictions = [
      {"index": ex.index, "prompt": pipeline.example_prompt(config, ds, split, ex),
       "candidates": list(ex.candidate_titles), "target": ex.target_title, "answer": answer,
       "valid": rec["valid"], "hit": rec["hit"], "valid_substring": rec["valid_substring"],
       "answer_item": rec["answer_item"], "target_item": ex.target}
      for ex, answer, rec in zip(examples, answers, records)]
  return figures, predictions


def model_dir(workdir: str, run: str) -> str:
  return os.path.join(workdir, run, "model")


def eval_paths(workdir: str, run: str) -> tuple[str, str]:
  folder = os.path.join(workdir, "eval")
  return os.path.join(folder, f"{run}.json"), os.path.join(folder, f"{run}.predictions.jsonl")


def write_eval(workdir: str, run: str, figures: dict, predictions: list[dict]) -> None:
  """Writes DIR/eval/<run>.json and .predictions.jsonl atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  summary_path, predictions_path = eval_paths(workdir, run)
  os.makedirs(os.path.dirname(summary_path), exist_ok=True)
  with open(predictions_path + ".tmp", "w", encoding="utf-8") as f:
    for p in predictions:
      f.write(json.dumps(p, ensure_ascii=False) + "\n")
  os.replace(predictions_path + ".tmp", predictions_path)
  pipeline.write_json(summary_path, figures)


def run_eval_one(config, workdir: str, run: str) -> dict:
  """Evaluates one run's model on config.eval.split; writes and returns its figures."""
  t0 = time.time()
  folder = model_dir(workdir, run)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"eval: {folder} not found; train {run!r} first (stage "
                            f"{'sft' if run == 'sft' else 'dpo'})")
  ds = pipeline.open_dataset(config, workdir)
  tok = pipeline.load_tokenizer(config, workdir)
  split = str(config.eval.split)
  figures, predictions = evaluate_model(config, checkpoints.load_orbax(folder), tok, ds, split,
                                        int(config.eval.get("max_examples") or 0))
  figures = {"run": run, "split": split, **figures, "seconds": round(time.time() - t0, 1)}
  write_eval(workdir, run, figures, predictions)
  print(f"eval {run}: hit_ratio@1 {figures['hit_ratio@1']:.4f} valid_ratio "
        f"{figures['valid_ratio']:.4f} head_ratio {figures['head_ratio']:.4f} "
        f"({figures['num_examples']} {split} examples, {figures['seconds']} s)", flush=True)
  return figures
