"""The eval stage (METHOD.md section 6): greedy answers and candidate ranking, one unit per run.

Reads config: eval, vocab_chunk (and data.max_seq_len for the scoring rows).
Consumes: data, and the run's model unit (sft, or dpo/<method>).
Writes, for every run in config.methods (``sft`` = DIR/sft/model, others DIR/<method>/model):
  DIR/eval/<run>.json              the aggregate figures (metrics.generation_metrics keys plus
                                   metrics.ranking_metrics keys), split, seconds, and the same
                                   figures per eval subset of the split ("subsets", e.g. LastFM's
                                   llara_last: LLaRA's 122 one-row-per-user rows)
  DIR/eval/<run>.predictions.jsonl one line per example: prompt (the exact text fed to the model),
                                   candidates, target, answer (decoded, stripped), valid, hit
                                   (plus valid_substring, the item ids answer_item, target_item,
                                   the user, and rank: the target's 0-based rank among the
                                   candidates ranked by the model's scores, null without
                                   eval.ranking)
so anyone can audit or recompute the figures from the predictions alone.
"""

from __future__ import annotations

import time

import numpy as np

from rosepo_jax import checkpoints, generate, metrics, scoring
from rosepo_jax.workdir import Context, Paths, Stage, Unit, model_unit, write_json, write_jsonl


def _figures(answers, examples, scores_NxC, popularity) -> tuple[dict, list[dict]]:
  """METHOD.md section 6 figures (+ ranking when `scores_NxC` is given) and per-example records
  (`metrics.generation_metrics`'s, each with the target's "rank": `metrics.target_ranks`, or
  None without scores)."""
  figures, records = metrics.generation_metrics(
      answers, [ex.candidate_titles for ex in examples], [ex.candidates for ex in examples],
      [ex.target for ex in examples], popularity)
  ranks = [None] * len(examples)
  if scores_NxC is not None:
    target_pos = np.array([ex.candidates.index(ex.target) for ex in examples])
    rank_N = metrics.target_ranks(scores_NxC, target_pos)
    figures.update(metrics.ranking_metrics(rank_N))
    ranks = [int(r) for r in rank_N]
  return figures, [{**rec, "rank": rank} for rec, rank in zip(records, ranks)]


def evaluate_model(ctx: Context, model, split: str, limit: int = 0) -> tuple[dict, list[dict]]:
  """Figures and per-example predictions of `model` on `split` (a seeded draw of `limit` examples
  across users if > 0, `Context.sample`).

  When the dataset defines eval subsets of `split` (e.g. LLaRA's one-row-per-user rows),
  ``figures["subsets"][name]`` holds the same figures over the subset's evaluated examples.
  """
  section, ds, codec = ctx.config.eval, ctx.dataset, ctx.codec
  examples, encoded = ctx.sample(split, limit)
  prompt_ids = [p for p, _ in encoded]
  rows = None  # each candidate's scored response ids, built when decoding or ranking needs them
  if section.decoding == "candidates" or section.ranking:
    rows = scoring.candidate_rows(codec, prompt_ids, [ex.candidates for ex in examples],
                                  ds.titles)
  allowed = None
  if section.decoding == "candidates":
    allowed = [row.responses for row in rows]
    longest = max(((len(ids), title) for row, ex in zip(rows, examples)
                   for ids, title in zip(row.responses, ex.candidate_titles)), default=(0, ""))
    if longest[0] > section.max_new_tokens:
      raise ValueError(f"config.eval.max_new_tokens={section.max_new_tokens} is shorter than the "
                       f"candidate {longest[1]!r} ({longest[0]} tokens with EOS), which "
                       "eval.decoding='candidates' must be able to answer")
  answers = generate.greedy_answers(model, codec, prompt_ids, section.batch_size,
                                    section.max_new_tokens, desc=f"eval {split}: answers",
                                    responses=allowed)
  scores = None
  if section.ranking:
    scores = scoring.score_responses(
        model, rows, batch_size=max(section.batch_size // 4, 1), shape=ctx.batch_shape,
        vocab_chunk=ctx.config.vocab_chunk, desc=f"eval {split}: candidate scores")
  figures, records = _figures(answers, examples, scores, ds.train_popularity)
  position = {ex.index: k for k, ex in enumerate(examples)}
  for name, indices in ds.eval_subsets.get(split, {}).items():
    kept = [position[i] for i in indices if i in position]
    if kept:
      figures.setdefault("subsets", {})[name] = _figures(
          [answers[k] for k in kept], [examples[k] for k in kept],
          None if scores is None else scores[kept], ds.train_popularity)[0]
  predictions = [
      {"index": ex.index, "prompt": ctx.example_prompt(split, ex),
       "candidates": list(ex.candidate_titles), "target": ex.target_title, "answer": answer,
       "valid": rec["valid"], "hit": rec["hit"], "valid_substring": rec["valid_substring"],
       "answer_item": rec["answer_item"], "target_item": ex.target, "user": ex.user,
       "rank": rec["rank"]}
      for ex, answer, rec in zip(examples, answers, records)]
  return figures, predictions


def run(ctx: Context, unit: Unit) -> dict:
  """Evaluates run `unit.run`'s model on config.eval.split; writes and returns its figures."""
  t0, name, section = time.time(), unit.run, ctx.config.eval
  model = checkpoints.load_orbax(ctx.paths.model(name), mesh=ctx.mesh())
  figures, predictions = evaluate_model(ctx, model, section.split, section.max_examples)
  figures = {"run": name, "split": section.split, "decoding": section.decoding, **figures,
             "seconds": round(time.time() - t0, 1)}
  write_jsonl(ctx.paths.eval_predictions(name), predictions)
  write_json(ctx.paths.eval_summary(name), figures)
  print(f"eval {name}: hit_ratio@1 {figures['hit_ratio@1']:.4f} valid_ratio "
        f"{figures['valid_ratio']:.4f} head_ratio {figures['head_ratio']:.4f} "
        f"({figures['num_examples']} {section.split} examples, {figures['seconds']} s)", flush=True)
  return figures


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  return [paths.eval_summary(unit.run), paths.eval_predictions(unit.run)]


# The predictions' format: a workdir evaluated with an older one (no "user" field, which the
# report's bootstrap needs, or no "rank", its paired rank_hit_ratio@1) reruns its eval units.
PREDICTIONS_FORMAT = 3

STAGE = Stage(name="eval", sections=("eval", "vocab_chunk"),
              units=lambda config: [Unit("eval", m) for m in config.methods],
              inputs=lambda config, unit: [Unit("data"), model_unit(unit.run)],
              outputs=_outputs, run=run, per_seed=True,
              key_extra=lambda config, unit: {"predictions_format": PREDICTIONS_FORMAT})
