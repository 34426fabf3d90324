"""The stages of a run, usable from Python: data -> sft -> negatives -> oracle -> preference ->
eval -> export (later issues add negatives, oracle, eval, export).

Each stage reads `config` and writes under `workdir`:
  data: DIR/data/tfds (the TFDS dataset), DIR/data/tokenizer, DIR/data/stats.json
  sft:  DIR/sft/{checkpoints,tb}, DIR/sft/model (orbax model dir + tokenizer: pi_ref)
  oracle: DIR/oracle/model (SASRec), DIR/oracle/metrics.json
  negatives: DIR/preference/pairs.array_record and stats.json (all strategies, eps, ref log-probs)
  dpo:  DIR/<method>/{checkpoints,tb,model} for each preference method in config.methods,
        from DIR/sft/model, on random rejected pairs with reference log-probs computed once
        (DIR/preference/random.npz)
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from rosepo_jax.data import dataset as dataset_lib
from rosepo_jax.data import prompts, tokenizer as tokenizer_lib
from rosepo_jax.data.batching import encode_prompt, encode_response

# The oracle runs before negatives: each pair's smoothing factor is computed when it is made.
STAGES = ("data", "sft", "oracle", "negatives", "dpo")


def data_dir(workdir: str) -> str:
  return os.path.join(workdir, "data")


def open_dataset(config, workdir: str) -> dataset_lib.RecDataset:
  return dataset_lib.load_dataset(config.data, os.path.join(data_dir(workdir), "tfds"))


def example_prompt(config, ds: dataset_lib.RecDataset, split: str, ex) -> str:
  """The exact prompt text of an example (template chosen per example when several)."""
  templates = prompts.templates_for(config.prompt, ds.name)
  template = prompts.choose_template(templates, config.data.seed, split, ex.index)
  return prompts.render_prompt(template, ex.history_titles, ex.candidate_titles)


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


def _write_json(path: str, obj) -> None:
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
  templates = prompts.templates_for(config.prompt, ds.name)
  for split in ("train", "val", "test"):
    examples = ds.examples(split)
    split_stats = dataset_lib.split_stats(examples)
    lengths = np.array([len(encode_prompt(
        tok, prompts.choose_template(templates, config.data.seed, split, ex.index),
        ex.history_titles, ex.candidate_titles)) for ex in examples])
    if len(lengths):
      split_stats["prompt_tokens"] = {"p50": float(np.percentile(lengths, 50)),
                                      "p95": float(np.percentile(lengths, 95)),
                                      "max": int(lengths.max())}
    stats["splits"][split] = split_stats
  stats["reader"] = {k: v for k, v in ds.info.items() if k != "item_genre"}
  stats["seconds"] = round(time.time() - t0, 1)
  _write_json(os.path.join(data_dir(workdir), "stats.json"), stats)
  print(f"data: {ds.name}, {ds.num_items} items, "
        + ", ".join(f"{k} {v['examples']}" for k, v in stats["splits"].items()), flush=True)
  return stats


def encoded_examples(config, ds, tok, split: str):
  """(prompt ids, target response ids) for every example of `split`.

  Cached on the dataset object together with the tokenizer it was made with (a later call with
  another tokenizer re-encodes), so the cache can never outlive or mix up its inputs.
  """
  cached = ds._cache.get(("encoded", split))  # pylint: disable=protected-access
  if cached is None or cached[0] is not tok:
    templates = prompts.templates_for(config.prompt, ds.name)
    encoded = [
        (encode_prompt(tok, prompts.choose_template(templates, config.data.seed, split, ex.index),
                       ex.history_titles, ex.candidate_titles),
         encode_response(tok, ex.target_title)) for ex in ds.examples(split)]
    cached = ds._cache[("encoded", split)] = (tok, encoded)  # pylint: disable=protected-access
  return cached[1]


def run(config, workdir: str, stages) -> None:
  """Runs `stages` (names from STAGES, or "all") in pipeline order."""
  from rosepo_jax import stages as stage_lib  # pylint: disable=g-import-not-at-top
  stages = list(STAGES) if list(stages) == ["all"] else list(stages)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)} or all")
  runners = {"data": run_data, "sft": stage_lib.run_sft, "oracle": stage_lib.run_oracle,
             "negatives": stage_lib.run_negatives, "dpo": stage_lib.run_preference}
  for stage in STAGES:
    if stage in stages:
      runners[stage](config, workdir)
