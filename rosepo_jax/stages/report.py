"""The report stage: DIR/report.md and DIR/plots/*.png from what the earlier units wrote.

Reads config: methods (and data through the dataset, for the popularity percentiles).
Consumes: data, eval/<run> and the model unit of every run (its metrics.jsonl), and negatives
when configured (eps per strategy).
Writes: DIR/report.md (one table: rows = runs, columns = METHOD.md section 6 figures; one more
per eval subset of the split, e.g. LastFM's llara_last) and DIR/plots/:
  popularity.png  popularity percentile of the recommended (valid) items per run, against the
                  test targets'
  eps.png         the smoothing factor eps per rejected-sampling strategy (negatives stage)
  training.png    training curves per run: loss, rewards/margin, rewards/accuracy (and SFT loss)
"""

from __future__ import annotations

import os

import jax
import matplotlib
import numpy as np

from rosepo_jax import metrics
from rosepo_jax.workdir import (Context, Paths, Stage, Unit, model_unit, read_json, read_jsonl,
                                read_records, write_text)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

# Columns of the table, in METHOD.md section 6 order.
COLUMNS = ("hit_ratio@1", "valid_ratio", "valid_ratio_substring", "hit_ratio@1_valid",
           "pop_mean_percentile", "head_ratio", "coverage", "hit_ratio@1_tercile_low",
           "hit_ratio@1_tercile_mid", "hit_ratio@1_tercile_high", "rank_hit_ratio@1",
           "rank_hit_ratio@5", "rank_hit_ratio@10", "rank_ndcg@5", "rank_ndcg@10")


def _fmt(value) -> str:
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def method_table(summaries: dict[str, dict]) -> str:
  """Markdown table: one row per run plus the targets' popularity reference row."""
  header = ["run"] + list(COLUMNS) + ["num_examples"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for run, s in summaries.items():
    lines.append("| " + " | ".join([run] + [_fmt(s.get(c, "")) for c in COLUMNS]
                                   + [str(s["num_examples"])]) + " |")
  first = next(iter(summaries.values()))
  reference = {"pop_mean_percentile": first["target_pop_mean_percentile"],
               "head_ratio": first["target_head_ratio"], "coverage": 1.0}
  lines.append("| (targets) | " + " | ".join(_fmt(reference.get(c, "")) for c in COLUMNS)
               + f" | {first['num_examples']} |")
  return "\n".join(lines)


def training_curves(path: str) -> dict[str, list[tuple[int, float]]]:
  """{metric: [(step, value)]} from a run's metrics.jsonl (after a resume the last line of a
  step wins); {} when the file is missing."""
  if not os.path.isfile(path):
    return {}
  by_step = {row["step"]: row for row in read_jsonl(path)}
  curves = {}
  for step in sorted(by_step):
    for k, v in by_step[step].items():
      if k != "step":
        curves.setdefault(k, []).append((step, v))
  return curves


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=110)
  plt.close(fig)
  os.replace(path + ".tmp.png", path)
  return path


def make_plots(ctx: Context, predictions: dict[str, list[dict]]) -> list[str]:
  """Writes DIR/plots/*.png; returns their paths."""
  folder = ctx.paths.plots
  os.makedirs(folder, exist_ok=True)
  pct = metrics.popularity_percentiles(ctx.dataset.train_popularity)
  written = []

  fig, ax = plt.subplots(figsize=(7, 4))
  bins = np.linspace(0, 100, 21)
  first = next(iter(predictions.values()))
  ax.hist(pct[[p["target_item"] for p in first]], bins=bins, density=True, histtype="stepfilled",
          alpha=0.25, color="gray", label="test targets")
  for run, preds in predictions.items():
    items = [p["answer_item"] for p in preds if p["answer_item"] is not None]
    if items:
      ax.hist(pct[items], bins=bins, density=True, histtype="step", linewidth=1.5,
              label=f"{run} ({len(items)} valid)")
  ax.set(xlabel="popularity percentile of the item (training split)", ylabel="density",
         title="Recommended items vs targets")
  ax.legend(fontsize=8)
  written.append(_save(fig, os.path.join(folder, "popularity.png")))

  if any(ctx.config.uses_negatives(m) for m in ctx.config.methods):
    eps = {}
    for pair in read_records(ctx.paths.pairs):
      eps.setdefault(pair["strategy"], []).append(pair["eps"])
    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted(eps)
    ax.boxplot([eps[n] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n({len(eps[n])})" for n in names])
    ax.set(ylabel="eps", title="Smoothing factor per rejected-sampling strategy")
    written.append(_save(fig, os.path.join(folder, "eps.png")))

  panels = ("loss", "rewards/margin", "rewards/accuracy")
  fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
  for run in ctx.config.methods:
    curves = training_curves(ctx.paths.metrics_log(run))
    for ax, name in zip(axes, panels):
      if name in curves and (run != "sft" or name == "loss"):
        steps, values = zip(*curves[name])
        ax.plot(steps, values, label=run)
  for ax, name in zip(axes, panels):
    ax.set(xlabel="step", title=name)
    ax.legend(fontsize=8)
  written.append(_save(fig, os.path.join(folder, "training.png")))
  return written


def run(ctx: Context, unit: Unit | None = None) -> str:
  """Writes DIR/report.md and DIR/plots; prints the table; returns the markdown."""
  del unit
  summaries, predictions = {}, {}
  for name in ctx.config.methods:
    summaries[name] = read_json(ctx.paths.eval_summary(name), "run the eval stage first")
    predictions[name] = read_jsonl(ctx.paths.eval_predictions(name))
  table = method_table(summaries)
  subsets = sorted({name for s in summaries.values() for name in s.get("subsets", {})})
  for name in subsets:
    rows = {run: s["subsets"][name] for run, s in summaries.items() if name in s.get("subsets", {})}
    table += f"\n\nEval subset `{name}`:\n\n" + method_table(rows)
  print(table, flush=True)
  if jax.process_index() != 0:
    return table
  plots = make_plots(ctx, predictions)
  split = next(iter(summaries.values()))["split"]
  text = "\n".join([
      f"# Report: {os.path.abspath(ctx.paths.root)}", "",
      f"Dataset `{ctx.config.data.name}`, {split} split; greedy answers (METHOD.md section 6). "
      "Columns are the keys of DIR/eval/<run>.json; the last row gives the same popularity "
      "figures for the targets.", "", table, "",
      *[f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots], ""])
  write_text(ctx.paths.report, text)
  return text


def _inputs(config, unit: Unit) -> list[Unit]:
  del unit
  negatives = [Unit("negatives")] if any(config.uses_negatives(m) for m in config.methods) else []
  return ([Unit("data")] + [Unit("eval", m) for m in config.methods]
          + [model_unit(m) for m in config.methods] + negatives)


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  del unit
  return [paths.report, paths.plots]


STAGE = Stage(name="report", sections=("methods",), units=lambda config: [Unit("report")],
              inputs=_inputs, outputs=_outputs, run=run)
