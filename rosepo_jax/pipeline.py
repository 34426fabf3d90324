"""The stages of a run, usable from Python: data -> sft -> oracle -> negatives -> dpo -> eval ->
export -> report (the oracle comes before negatives: each pair's eps is computed when it is made).

Each stage reads `config` and writes under `workdir`:
  data: DIR/data/tfds (the TFDS dataset), DIR/data/tokenizer, DIR/data/stats.json
  sft:  DIR/sft/{checkpoints,tb}, DIR/sft/model (orbax model dir + tokenizer: pi_ref)
  oracle: DIR/oracle/model (SASRec), DIR/oracle/metrics.json
  negatives: DIR/preference/pairs.array_record and stats.json (all strategies, eps, ref log-probs)
  dpo:  DIR/<method>/{checkpoints,tb,model} for each preference method in config.methods,
        from DIR/sft/model (random rejected pairs: reference log-probs computed once, cached in
        DIR/preference/random_k{k}.npz; rosepo*: the negatives stage's pairs)
  eval: DIR/eval/<run>.json and <run>.predictions.jsonl for each run in config.methods
  export: DIR/export/<run>/ Hugging Face folders (weights, config, tokenizer)
  report: DIR/report.md (the method table) and DIR/plots/*.png

`compile` (not part of "all") lowers and compiles the train steps for the configured mesh without
weights or data and prints per-device memory and FLOPs (rosepo_jax/aot.py).

Up-to-date tracking (`run`): the work is split into units (a stage, or a stage for one run:
"dpo/rosepo", "eval/sft"). A finished unit writes DIR/stages/<unit>.json holding its key: a hash of
the config sections it reads plus the run ids of the units it consumes. A unit whose key is
unchanged is skipped; a changed key (or --force) reruns it, and its new run id makes everything
downstream stale in turn. An interrupted unit (key written as "running") resumes where its
checkpoints are when rerun with the same key; with a different key its outputs are removed first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid

import numpy as np

from rosepo_jax.data import dataset as dataset_lib
from rosepo_jax.data import prompts, tokenizer as tokenizer_lib
from rosepo_jax.data.batching import encode_prompts, encode_response

# The oracle runs before negatives: each pair's smoothing factor is computed when it is made.
STAGES = ("data", "sft", "oracle", "negatives", "dpo", "eval", "export", "report")


def data_dir(workdir: str) -> str:
  return os.path.join(workdir, "data")


def open_dataset(config, workdir: str) -> dataset_lib.RecDataset:
  return dataset_lib.load_dataset(config.data, os.path.join(data_dir(workdir), "tfds"))


def example_prompt(config, ds: dataset_lib.RecDataset, split: str, ex,
                   candidate_titles=None) -> str:
  """The exact prompt text of an example (template chosen per example when several); with
  `candidate_titles`, the same prompt showing those candidates instead of all of the example's."""
  templates = prompts.templates_for(config.prompt, ds.name)
  template = prompts.choose_template(templates, config.data.seed, split, ex.index)
  return prompts.render_prompt(template, ex.history_titles,
                               ex.candidate_titles if candidate_titles is None else candidate_titles)


def build_tokenizer(config, workdir: str, ds: dataset_lib.RecDataset):
  """Trains the BPE on training prompts + titles (kind "bpe") or loads the backbone's."""
  kind = config.tokenizer.kind
  if kind == "pretrained":
    return tokenizer_lib.load_pretrained_tokenizer(config.tokenizer.path)
  if kind != "bpe":
    raise ValueError(f"config.tokenizer.kind={kind!r}; expected bpe or pretrained")
  texts = [example_prompt(config, ds, "train", ex) for ex in ds.examples("train")]
  texts += [prompts.response_text(t) for t in ds.titles]
  tok = tokenizer_lib.train_bpe(texts, config.tokenizer.vocab_size)
  tokenizer_lib.save_tokenizer(tok, os.path.join(data_dir(workdir), "tokenizer"))
  return tok


def load_tokenizer(config, workdir: str):
  if config.tokenizer.kind == "pretrained":
    return tokenizer_lib.load_pretrained_tokenizer(config.tokenizer.path)
  return tokenizer_lib.load_saved_tokenizer(os.path.join(data_dir(workdir), "tokenizer"))


def write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
  os.replace(tmp, path)


def run_data(config, workdir: str) -> dict:
  """Prepares the dataset and tokenizer; writes DIR/data/stats.json and returns the stats."""
  t0 = time.time()
  os.makedirs(data_dir(workdir), exist_ok=True)
  ds = open_dataset(config, workdir)
  tok = build_tokenizer(config, workdir, ds)
  stats = {"dataset": ds.name, "catalogue_size": ds.num_items,
           "duplicate_titles_resolved": ds.duplicate_titles,
           "num_candidates": int(config.data.num_candidates), "splits": {},
           "tokenizer": {"kind": config.tokenizer.kind, "vocab_size": len(tok)}}
  for split in ("train", "val", "test"):
    examples = ds.examples(split)
    split_stats = dataset_lib.split_stats(examples)
    lengths = np.array([len(ids) for ids in encode_prompts(
        tok, [example_prompt(config, ds, split, ex) for ex in examples])])
    if len(lengths):
      split_stats["prompt_tokens"] = {"p50": float(np.percentile(lengths, 50)),
                                      "p95": float(np.percentile(lengths, 95)),
                                      "max": int(lengths.max())}
    stats["splits"][split] = split_stats
  stats["reader"] = {k: v for k, v in ds.info.items() if k != "item_genre"}
  stats["seconds"] = round(time.time() - t0, 1)
  write_json(os.path.join(data_dir(workdir), "stats.json"), stats)
  print(f"data: {ds.name}, {ds.num_items} items, "
        + ", ".join(f"{k} {v['examples']}" for k, v in stats["splits"].items()), flush=True)
  return stats


def encoded_examples(config, ds, tok, split: str, limit: int = 0):
  """(prompt ids, target response ids) for every example of `split` (the first `limit` if > 0).

  Cached on the dataset object together with the tokenizer it was made with (a later call with
  another tokenizer re-encodes), so the cache can never outlive or mix up its inputs; a prefix is
  encoded once and extended when a later call asks for more.
  """
  examples = ds.examples(split, limit)
  cached = ds._cache.get(("encoded", split))  # pylint: disable=protected-access
  encoded = cached[1] if cached is not None and cached[0] is tok else []
  if len(encoded) < len(examples):
    todo = examples[len(encoded):]
    prompt_ids = encode_prompts(tok, [example_prompt(config, ds, split, ex) for ex in todo])
    encoded = encoded + [(p, encode_response(tok, ex.target_title))
                         for p, ex in zip(prompt_ids, todo)]
    ds._cache[("encoded", split)] = (tok, encoded)  # pylint: disable=protected-access
  return encoded if len(encoded) == len(examples) else encoded[:len(examples)]


# ------------------------------------------------------------------------------------------------
# Units, keys and markers.

# The config sections each stage reads (besides what its input units carry in).
STAGE_SECTIONS = {
    "data": ("data", "prompt", "tokenizer"),
    "sft": ("model", "sft", "vocab_chunk"),
    "oracle": ("oracle",),
    "negatives": ("negatives", "vocab_chunk"),
    "dpo": ("preference", "model.lora_rank", "model.lora_alpha", "vocab_chunk"),
    "eval": ("eval", "vocab_chunk"),
    "export": ("export",),
    "report": ("methods",),
}


@dataclasses.dataclass(frozen=True)
class Unit:
  stage: str
  run: str = ""  # the method, for per-run stages

  @property
  def name(self) -> str:
    return f"{self.stage}/{self.run}" if self.run else self.stage


def trained_runs(config) -> list[str]:
  return [m for m in config.methods if m != "sft"]


def units(config, stage: str) -> list[Unit]:
  if stage in ("dpo",):
    return [Unit(stage, m) for m in trained_runs(config)]
  if stage in ("eval", "export"):
    return [Unit(stage, m) for m in config.methods]
  if stage == "negatives" and not any(_uses_pairs(config, m) for m in config.methods):
    return []
  return [Unit(stage)]


def _uses_pairs(config, method: str) -> bool:
  from rosepo_jax import stages as stage_lib  # pylint: disable=g-import-not-at-top
  return stage_lib.uses_rosepo_pairs(config, method)


def inputs(config, unit: Unit) -> list[Unit]:
  """The units whose outputs `unit` reads."""
  model = Unit("sft") if unit.run in ("", "sft") else Unit("dpo", unit.run)
  return {
      "data": [],
      "sft": [Unit("data")],
      "oracle": [Unit("data")],
      "negatives": [Unit("sft"), Unit("oracle")],
      "dpo": [Unit("sft")] + ([Unit("negatives")] if _uses_pairs(config, unit.run) else []),
      "eval": [model],
      "export": [model],
      "report": [Unit("eval", m) for m in config.methods],
  }[unit.stage]


def _section(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node.get(part) if hasattr(node, "get") else None
  return node.to_dict() if hasattr(node, "to_dict") else node


def marker_path(workdir: str, unit: Unit) -> str:
  return os.path.join(workdir, "stages", unit.name.replace("/", ".") + ".json")


def read_marker(workdir: str, unit: Unit) -> dict | None:
  path = marker_path(workdir, unit)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def unit_key(config, workdir: str, unit: Unit) -> dict:
  """What a unit's result depends on: its config sections (hashed) and its inputs' run ids."""
  sections = {s: _section(config, s) for s in STAGE_SECTIONS[unit.stage]}
  blob = json.dumps({"unit": unit.name, "sections": sections}, sort_keys=True, default=str)
  ins = {}
  for u in inputs(config, unit):
    m = read_marker(workdir, u)
    ins[u.name] = m["run_id"] if m and m["status"] == "done" else None
  return {"config": hashlib.sha256(blob.encode()).hexdigest()[:16], "inputs": ins}


def unit_outputs(workdir: str, unit: Unit) -> list[str]:
  """What a unit writes (removed before a rerun under a different key)."""
  stage, run = unit.stage, unit.run
  return {
      "data": [data_dir(workdir)],
      "sft": [os.path.join(workdir, "sft")],
      "oracle": [os.path.join(workdir, "oracle")],
      "negatives": [os.path.join(workdir, "preference")],
      "dpo": [os.path.join(workdir, run)],
      "eval": [os.path.join(workdir, "eval", f"{run}.json"),
               os.path.join(workdir, "eval", f"{run}.predictions.jsonl")],
      "export": [os.path.join(workdir, "export", run)],
      "report": [os.path.join(workdir, "report.md"), os.path.join(workdir, "plots")],
  }[stage]


def _write_marker(workdir: str, unit: Unit, marker: dict) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(marker_path(workdir, unit)), exist_ok=True)
    write_json(marker_path(workdir, unit), marker)


def _remove(paths) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  for path in paths:
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def run_unit(config, workdir: str, unit: Unit):
  """Runs one unit's work (no up-to-date check)."""
  from rosepo_jax import evaluation, report, stages as stage_lib  # pylint: disable=g-import-not-at-top
  runners = {
      "data": lambda: run_data(config, workdir),
      "sft": lambda: stage_lib.run_sft(config, workdir),
      "oracle": lambda: stage_lib.run_oracle(config, workdir),
      "negatives": lambda: stage_lib.run_negatives(config, workdir),
      "dpo": lambda: stage_lib.run_preference_method(config, workdir, unit.run),
      "eval": lambda: evaluation.run_eval_one(config, workdir, unit.run),
      "export": lambda: stage_lib.run_export_one(config, workdir, unit.run),
      "report": lambda: report.run_report(config, workdir),
  }
  return runners[unit.stage]()


def run(config, workdir: str, stages, force: bool = False) -> dict:
  """Runs `stages` (names from STAGES, or "all") in pipeline order, skipping up-to-date units.

  Returns {unit name: "ran" | "up to date"}.
  """
  from rosepo_jax import stages as stage_lib  # pylint: disable=g-import-not-at-top
  stages = list(STAGES) if list(stages) == ["all"] else list(stages)
  unknown = [s for s in stages if s not in STAGES + ("compile",)]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}, all, or compile")
  stage_lib.check_methods(config)
  outcome = {}
  if "compile" in stages:  # a check, not a result: never skipped, writes nothing
    from rosepo_jax import aot  # pylint: disable=g-import-not-at-top
    aot.run_compile(config, workdir)
    outcome["compile"] = "ran"
  for stage in STAGES:
    if stage not in stages:
      continue
    for unit in units(config, stage):
      key = unit_key(config, workdir, unit)
      marker = read_marker(workdir, unit)
      if not force and marker and marker["status"] == "done" and marker["key"] == key:
        print(f"{unit.name}: up to date (finished {marker['finished']}); skipped", flush=True)
        outcome[unit.name] = "up to date"
        continue
      if force or (marker and marker["key"] != key):
        _remove(unit_outputs(workdir, unit))  # stale results: start clean
      elif marker:
        print(f"{unit.name}: resuming an interrupted run", flush=True)
      _write_marker(workdir, unit, {"status": "running", "key": key, "run_id": None})
      t0 = time.time()
      run_unit(config, workdir, unit)
      _write_marker(workdir, unit, {
          "status": "done", "key": key, "run_id": uuid.uuid4().hex,
          "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
          "seconds": round(time.time() - t0, 1)})
      outcome[unit.name] = "ran"
  return outcome
