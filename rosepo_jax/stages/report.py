"""The report stage: DIR/report.md and DIR/plots/*.png from what the earlier units wrote.

Reads config: methods, report (and data through the dataset, for the popularity percentiles and
the synthetic world's truth).
Consumes: data, eval/<run> and the model unit of every run (its metrics.jsonl), and negatives and
oracle when configured (eps per strategy, the oracle's calibration).
Writes: DIR/report.md (one table: rows = runs, columns = METHOD.md section 6 figures; one more
per eval subset of the split, e.g. LastFM's llara_last; then the figures over config.seeds and the
paired differences, rosepo - every other run and every other run - sft, with bootstrap intervals
over test users; and the reference points: the Bayes-optimal ceiling of the synthetic world, on
the runs' rows and the whole split, the SASRec oracle's on the runs' rows (and on those of each
eval subset) from DIR/oracle/model, and its, popularity's and random ranking's figures over the
whole test split from DIR/oracle/metrics.json, when the oracle stage has run),
DIR/eval/summary.json (those figures: `seed_figures`, and "reference") and DIR/plots/:
  popularity.png  popularity percentile of the recommended (valid) items per run, against the
                  test targets'
  eps.png         the smoothing factor eps per rejected-sampling strategy (negatives stage),
                  next to the oracle's reliability on validation (DIR/oracle/calibration.json:
                  predicted probability of its top candidate vs how often that is the target)
  training.png    training curves per run: loss, rewards/margin, rewards/accuracy (and SFT loss)
"""

from __future__ import annotations

import io
import posixpath

import matplotlib
import numpy as np

from rosepo_jax import files, metrics, multihost
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.workdir import (Context, Paths, Stage, Unit, model_unit, read_json, read_jsonl,
                                read_records, write_json, write_text)

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
  if not files.isfile(path):
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
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  files.write_bytes(path, png.getvalue())
  return path


def make_plots(ctx: Context, predictions: dict[str, list[dict]]) -> list[str]:
  """Writes DIR/plots/*.png; returns their paths."""
  folder = ctx.paths.plots
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
  written.append(_save(fig, files.join(folder, "popularity.png")))

  if any(ctx.config.uses_negatives(m) for m in ctx.config.methods):
    eps = {}
    for pair in read_records(ctx.paths.pairs):
      eps.setdefault(pair["strategy"], []).append(pair["eps"])
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4))
    names = sorted(eps)
    ax.boxplot([eps[n] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n({len(eps[n])})" for n in names])
    ax.set(ylabel="eps", title="Smoothing factor per rejected-sampling strategy")
    calibration = read_json(ctx.paths.oracle_calibration, "run the oracle stage")
    bins = [b for b in calibration["reliability"] if b["examples"]]
    right.plot([0, 1], [0, 1], color="gray", linewidth=0.8, label="calibrated")
    right.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
               label=f"oracle (tau {calibration['tau']:.3g}; {calibration['folds']} fold(s))")
    for b in bins:
      right.annotate(str(b["examples"]), (b["predicted"], b["observed"]), fontsize=7)
    right.set(xlabel="predicted probability of the top candidate", ylabel="observed frequency",
              xlim=(0, 1), ylim=(0, 1), title="Oracle reliability (validation; n per bin)")
    right.legend(fontsize=8)
    written.append(_save(fig, files.join(folder, "eps.png")))

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
  written.append(_save(fig, files.join(folder, "training.png")))
  return written


# The figures with paired differences: each example's (numerator, denominator) of the figure from
# its prediction and the head items (`metrics.head_items`); a figure is sum(num) / sum(den).
# rank_hit_ratio@1 (the candidate the model scores highest is the target: greedy decoding
# restricted to the candidates, up to the EOS term) is None for predictions without ranks
# (eval.ranking off), and then left out.
PER_EXAMPLE = {
    "hit_ratio@1": lambda p, head: (float(p["hit"]), 1.0),
    "valid_ratio": lambda p, head: (float(p["valid"]), 1.0),
    "head_ratio": lambda p, head: ((0.0, 0.0) if p["answer_item"] is None
                                   else (float(head[p["answer_item"]]), 1.0)),
    "rank_hit_ratio@1": lambda p, head: (None if p.get("rank") is None
                                         else (float(p["rank"] == 0), 1.0)),
}


def differences(runs, baselines=()) -> list[tuple[str, str]]:
  """The paired differences a - b the report gives for the configured runs (in their order):
  rosepo against every other run (for an ablation, what the left-out part adds), then every other
  run against sft, then every run against each of `baselines` (config.report.baselines); each
  pair once."""
  out = [("rosepo", r) for r in runs if r != "rosepo"] if "rosepo" in runs else []
  out += [(r, "sft") for r in runs if "sft" in runs and r not in ("sft", "rosepo")]
  for b in baselines:
    out += [(r, b) for r in runs if r != b and (r, b) not in out and (b, r) not in out]
  return out


def seed_figures(summaries: dict, predictions: dict, head: np.ndarray,
                 baselines=()) -> dict:
  """What DIR/eval/summary.json holds: every figure of every run over seeds (`metrics.over_seeds`)
  and the paired `differences` in `PER_EXAMPLE`'s figures (`metrics.
  paired_ratio_difference`: bootstrap over test users within each seed, pooled over seeds).

  summaries / predictions: {seed: {run: DIR/eval/<run>.json / its predictions}} (seed None: the
  one run without config.seeds); head: bool [I], the head items of the training popularity.
  """
  seeds = list(summaries)
  runs = list(next(iter(summaries.values())))
  out = {"seeds": seeds, "runs": {}, "differences": {}}
  for run in runs:
    keys = [k for k, v in summaries[seeds[0]][run].items()
            if isinstance(v, (int, float)) and k not in ("seconds", "num_examples")]
    out["runs"][run] = {k: metrics.over_seeds([summaries[s][run][k] for s in seeds])
                        for k in keys}
  for a, b in differences(runs, baselines):
    figures = {}
    for figure, of in PER_EXAMPLE.items():
      per_seed = []
      for s in seeds:
        pa, pb = predictions[s][a], predictions[s][b]
        if [p["index"] for p in pa] != [p["index"] for p in pb]:
          raise ValueError(f"eval predictions of {a} and {b} (seed {s}) are not the same examples")
        va, vb = [of(p, head) for p in pa], [of(p, head) for p in pb]
        if None in va or None in vb:
          break
        na_N, da_N = np.array(va).T
        nb_N, db_N = np.array(vb).T
        per_seed.append((np.array([p["user"] for p in pa]), na_N, da_N, nb_N, db_N))
      else:
        figures[figure] = metrics.paired_ratio_difference(per_seed)
    out["differences"][f"{a} - {b}"] = figures
  return out


def _interval(d: dict) -> str:
  return f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"


def seeds_table(figures: dict) -> str:
  """Markdown: per run, mean +- std over seeds of the main figures; then the paired differences."""
  cols = ("hit_ratio@1", "valid_ratio", "head_ratio", "rank_hit_ratio@1", "rank_ndcg@10")
  seeds = figures["seeds"]
  over = ("One run (no config.seeds)." if seeds == [None] else
          f"Over {len(seeds)} seeds {seeds}: mean +- std (95% t-interval of the mean in "
          "DIR/eval/summary.json).")
  lines = [over, "",
           "| run | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
  for run, by_key in figures["runs"].items():
    cells = []
    for c in cols:
      f = by_key.get(c)
      cells.append("" if f is None else f"{f['mean']:.4f}"
                   + ("" if f["std"] is None else f" +- {f['std']:.4f}"))
    lines.append(f"| {run} | " + " | ".join(cells) + " |")
  if figures["differences"]:
    lines += ["", "Paired differences, mean over seeds [95% interval: bootstrap over test users "
              "within each seed, pooled over seeds]:", "",
              "| difference | " + " | ".join(PER_EXAMPLE) + " |", "|" + "---|" * (len(PER_EXAMPLE) + 1)]
    for name, d in figures["differences"].items():
      lines.append(f"| {name} | " + " | ".join(_interval(d[f]) if f in d else ""
                                               for f in PER_EXAMPLE) + " |")
  return "\n".join(lines)


def reference_points(ctx: Context, predictions: list[dict], split: str) -> dict:
  """What the runs' HitRatio@1 compares with: the Bayes-optimal ceiling on the runs' own rows
  and on the whole split (the synthetic world, `metrics.bayes_hit_ratio`); when the oracle stage
  has run, the all-users SASRec oracle's on the runs' rows and on each eval subset among them
  (e.g. LastFM's llara_last; on validation rows, those its early stopping saw), and on the test
  split its, random and popularity-only ranking's over the whole split (DIR/oracle/metrics.json)."""
  out = {}
  indices = [p["index"] for p in predictions]
  rows = ctx.dataset.examples_at(split, indices)
  if ctx.knows_truth:
    out["bayes ceiling (the world's true probabilities), the runs' rows"] = {
        "hit_ratio@1": metrics.bayes_hit_ratio(ctx.true_probs(split, rows)),
        "examples": len(rows)}
    whole = ctx.dataset.examples(split)
    out[f"bayes ceiling, the whole {split} split"] = {
        "hit_ratio@1": metrics.bayes_hit_ratio(ctx.true_probs(split, whole)),
        "examples": len(whole)}
  if files.isdir(ctx.paths.oracle_model):
    sasrec = oracle_lib.load_oracle(ctx.paths.oracle_model)
    out["SASRec oracle, the runs' rows"] = {"hit_ratio@1": sasrec.evaluate(rows)["hit_ratio@1"],
                                            "examples": len(rows)}
    for name, subset in sorted(ctx.dataset.eval_subsets.get(split, {}).items()):
      picked = set(subset)
      kept = [ex for ex, i in zip(rows, indices) if i in picked]
      if kept:
        out[f"SASRec oracle, the runs' rows of subset {name}"] = {
            "hit_ratio@1": sasrec.evaluate(kept)["hit_ratio@1"], "examples": len(kept)}
  if split == "test" and files.isfile(ctx.paths.oracle_metrics):
    oracle = read_json(ctx.paths.oracle_metrics)
    for name, figures in (("SASRec oracle", oracle), ("popularity-only ranking",
                                                      oracle["popularity"]),
                          ("random ranking", oracle["random"])):
      out[f"{name}, the whole test split"] = {"hit_ratio@1": figures["hit_ratio@1"],
                                              "examples": oracle["num_examples"]}
  return out


def reference_table(points: dict) -> str:
  lines = ["Reference points (HitRatio@1):", "", "| reference | hit_ratio@1 | examples |",
           "|---|---|---|"]
  lines += [f"| {name} | {p['hit_ratio@1']:.4f} | {p['examples']} |"
            for name, p in points.items()]
  return "\n".join(lines)


def run(ctx: Context, unit: Unit | None = None) -> str:
  """Writes DIR/report.md, DIR/plots and DIR/eval/summary.json; prints the tables; returns the
  markdown. With config.seeds, the first table is the first seed's; the seeds table covers all."""
  del unit
  summaries, predictions = {}, {}
  for seed in ctx.config.run_seeds:
    paths = ctx.for_seed(seed).paths
    summaries[seed] = {name: read_json(paths.eval_summary(name), "run the eval stage first")
                       for name in ctx.config.methods}
    predictions[seed] = {name: read_jsonl(paths.eval_predictions(name))
                         for name in ctx.config.methods}
  first = ctx.config.run_seeds[0]
  table = method_table(summaries[first])
  for name in sorted({n for s in summaries[first].values() for n in s.get("subsets", {})}):
    rows = {run: s["subsets"][name] for run, s in summaries[first].items()
            if name in s.get("subsets", {})}
    table += f"\n\nEval subset `{name}`:\n\n" + method_table(rows)
  split = next(iter(summaries[first].values()))["split"]
  decoding = next(iter(summaries[first].values())).get("decoding", "free")
  points = reference_points(ctx, next(iter(predictions[first].values())), split)
  if points:
    table += "\n\n" + reference_table(points)
  figures = seed_figures(summaries, predictions,
                         metrics.head_items(ctx.dataset.train_popularity),
                         ctx.config.report.baselines)
  figures["reference"] = points
  table += "\n\n" + seeds_table(figures)
  print(table, flush=True)
  if not multihost.is_leader():
    return table
  write_json(ctx.paths.eval_overall, figures)
  plots = make_plots(ctx.for_seed(first), predictions[first])
  seed_note = "" if first is None else f" The first table is seed {first}'s."
  text = "\n".join([
      f"# Report: {files.absolute(ctx.paths.root)}", "",
      f"Dataset `{ctx.config.data.name}`, {split} split; greedy answers "
      + ("(METHOD.md section 6). " if decoding == "free" else
         "restricted to the prompt's candidates (eval.decoding='candidates'). ")
      + "Columns are the keys of DIR/eval/<run>.json; the last row gives the same popularity "
      "figures for the targets." + seed_note, "", table, "",
      *[f"![{posixpath.basename(p)}](plots/{posixpath.basename(p)})" for p in plots], ""])
  write_text(ctx.paths.report, text)
  return text


def _inputs(config, unit: Unit) -> list[Unit]:
  del unit
  negatives = ([Unit("negatives"), Unit("oracle")]
               if any(config.uses_negatives(m) for m in config.methods) else [])
  return ([Unit("data")] + [Unit("eval", m) for m in config.methods]
          + [model_unit(m) for m in config.methods] + negatives)


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  del unit
  return [paths.report, paths.plots, paths.eval_overall]


# The report's format: a report written before the latest reference points (SASRec on the runs'
# rows) reruns.
REPORT_FORMAT = 3

STAGE = Stage(name="report", sections=("methods", "report"),
              units=lambda config: [Unit("report")],
              inputs=_inputs, outputs=_outputs, run=run,
              key_extra=lambda config, unit: {"report_format": REPORT_FORMAT})
