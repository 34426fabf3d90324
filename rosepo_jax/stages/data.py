"""The data stage: the TFDS dataset, the tokenizer and the data statistics.

Reads config: data, prompt, tokenizer; and, from outside DIR, the raw dataset files and a
pretrained tokenizer (their content fingerprint is part of the unit's key: an edited file reruns it).
Consumes: nothing (the raw files of config.data, or the synthetic world).
Writes: DIR/data/tfds (TFDS, array_record), DIR/data/tokenizer (a BPE trained here; nothing for a
pretrained tokenizer; with title tokens the BPE of the text around titles: the title tokens follow
it, one per catalogue item, `data.codec`), DIR/data/stats.json (with the vocabulary split into
subwords and title tokens, and prompt lengths per split), DIR/data/row_lengths.npz (the token counts that bound
every later row, `data.lengths`). Stops before any training when config.data.max_seq_len is
shorter than the longest row a later stage of this config will build.

In a multi-process job the leader prepares everything while the other processes wait; they open
the dataset and tokenizer from DIR/data afterwards.
"""

from __future__ import annotations

import os
import time

import numpy as np

from rosepo_jax import backbone, checkpoints, multihost
from rosepo_jax.config import ConfigError
from rosepo_jax.data import dataset as dataset_lib
from rosepo_jax.data import lengths as lengths_lib
from rosepo_jax.data import prompts
from rosepo_jax.data import records
from rosepo_jax.data import tokenizer as tokenizer_lib
from rosepo_jax.workdir import (Context, Paths, Stage, Unit, fingerprint, save_npz, single_unit,
                                write_json)


def build_tokenizer(ctx: Context):
  """Trains the BPE on the training prompts and titles (kind "bpe") and saves it, or loads the
  backbone's tokenizer (kind "pretrained"). With title tokens the BPE learns the prompts' text
  around the titles, which are tokens of their own (`data.codec`)."""
  t = ctx.config.tokenizer
  if t.kind == "pretrained":
    return tokenizer_lib.load_pretrained_tokenizer(t.path)
  ds = ctx.dataset
  pieces = [ctx.example_pieces("train", ex) for ex in ds.examples("train")]
  if t.title_tokens:
    texts = [text for p in pieces for text, is_title in p if not is_title]
  else:
    texts = ["".join(text for text, _ in p) for p in pieces]
    texts += [prompts.response_text(title) for title in ds.titles]
  tok = tokenizer_lib.train_bpe(texts, t.vocab_size)
  tokenizer_lib.save_tokenizer(tok, ctx.paths.tokenizer)
  return tok


def run(ctx: Context, unit: Unit | None = None) -> dict:
  """Prepares the dataset and tokenizer; writes DIR/data/stats.json and returns the stats (on the
  leader; {} on the other processes of a multi-process job)."""
  del unit
  stats = prepare(ctx) if multihost.is_leader() else {}
  multihost.barrier("data prepared")
  return stats


def prepare(ctx: Context) -> dict:
  """The data stage's work, in one process."""
  t0 = time.time()
  ds = ctx.dataset
  ctx.set_tokenizer(build_tokenizer(ctx))
  codec = ctx.codec
  stats = {"dataset": ds.name, "catalogue_size": ds.num_items,
           "duplicate_titles_resolved": ds.duplicate_titles,
           "num_candidates": ctx.config.data.num_candidates, "title_format": ctx.title_format,
           "splits": {},
           "tokenizer": {"kind": ctx.config.tokenizer.kind, "vocab_size": codec.vocab_size,
                         "subwords": len(codec.tokenizer),
                         "title_tokens": codec.vocab_size - len(codec.tokenizer)}}
  response_len_I = np.array([len(codec.encode_response(t)) for t in ds.titles], np.int64)
  row_lengths = {"catalogue_max": response_len_I.max()}
  for split in ("train", "val", "test"):
    examples = ds.examples(split)
    split_stats = dataset_lib.split_stats(examples)
    prompt_ids = codec.encode_prompts([ctx.example_pieces(split, ex) for ex in examples])
    per_example = lengths_lib.example_lengths(
        prompt_ids, [ex.target for ex in examples], [ex.candidates for ex in examples],
        response_len_I)
    row_lengths.update({f"{split}/{k}": v for k, v in per_example.items()})
    lengths = per_example["prompt"]
    split_stats["dropped_rows"] = ds.info.get("dropped_rows", {}).get(split, {})
    if len(lengths):
      split_stats["prompt_tokens"] = {"p50": float(np.percentile(lengths, 50)),
                                      "p95": float(np.percentile(lengths, 95)),
                                      "max": int(lengths.max())}
    stats["splits"][split] = split_stats
  stats["reader"] = {k: v for k, v in ds.info.items() if k not in ("item_genre", "dropped_rows")}
  stats["seconds"] = round(time.time() - t0, 1)
  save_npz(ctx.paths.row_lengths, **row_lengths)
  write_json(ctx.paths.data_stats, stats)
  print(f"data: {ds.name}, {ds.num_items} items, "
        + ", ".join(f"{k} {v['examples']}" for k, v in stats["splits"].items()), flush=True)
  rows = ctx.longest_rows()
  print("data: longest rows (tokens) " + ", ".join(f"{k} {v['tokens']}" for k, v in rows.items())
        + f"; max_seq_len {ctx.max_seq_len}", flush=True)  # a ConfigError when too short
  positions = backbone.architecture(ctx.config.model).max_position_embeddings
  kind = max(rows, key=lambda r: rows[r]["tokens"])
  if rows[kind]["tokens"] > positions:
    raise ConfigError(
        f"config.model: the model has {positions} positions (max_position_embeddings), but the "
        f"longest {kind} row ({rows[kind]['split']} example {rows[kind]['index']}) has "
        f"{rows[kind]['tokens']} tokens; raise config.model.overrides.max_position_embeddings or "
        "shorten the prompts (config.data.max_history)")
  return stats


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  del unit  # DIR/data itself is not the stage's: it may hold the user's raw files
  return [paths.tfds, paths.tokenizer, paths.data_stats, paths.row_lengths]


def _required(config, paths: Paths, unit: Unit) -> list[str]:
  del unit
  return ([paths.tfds, paths.data_stats, paths.row_lengths]
          + ([paths.tokenizer] if config.tokenizer.kind == "bpe" else []))


def external_inputs(config) -> list[str]:
  """The files outside DIR that the data stage reads: the raw dataset's files (and the frozen
  candidates, splits and eval rows it names: `records.input_files`), and a pretrained
  tokenizer. Only those: other files beside them (DIR/data's own outputs, when the raw files
  lie in DIR/data) are not the data's."""
  d = config.data
  paths = [] if d.name == "synthetic" else records.input_files(
      d.name, dataset_lib.manual_dir_of(d), dataset_lib.resolve_path(d.candidates_dir),
      dataset_lib.resolve_path(d.split_file), dataset_lib.resolve_path(d.eval_rows_dir))
  if config.tokenizer.kind == "pretrained":
    paths.append(checkpoints.resolve_model_path(config.tokenizer.path))
  return paths


def check(config) -> None:
  """The raw dataset's folder and files, and a pretrained tokenizer, are where the config says."""
  d = config.data
  if d.name != "synthetic":
    folder = dataset_lib.manual_dir_of(d)
    if not folder or not os.path.isdir(folder):
      raise records.MissingFileError(
          f"config.data.manual_dir={d.manual_dir!r}: {folder} is not a folder; set it to the "
          f"folder holding the {d.name} files {list(records.READER_FILES[d.name][0])}")
    records.require_files(folder, list(records.READER_FILES[d.name][0]), d.name)
  for key in ("candidates_dir", "eval_rows_dir"):
    path = dataset_lib.resolve_path(getattr(d, key))
    if path and not os.path.isdir(path):
      raise records.MissingFileError(f"config.data.{key}={getattr(d, key)!r}: {path} is not a "
                                     "folder")
  split_file = dataset_lib.resolve_path(d.split_file)
  if split_file and not os.path.isfile(split_file):
    raise records.MissingFileError(f"config.data.split_file={d.split_file!r}: {split_file} is "
                                   "not a file")
  if config.tokenizer.kind == "pretrained":
    checkpoints.check_model_path(config.tokenizer.path, "config.tokenizer.path", tokenizer=True)


STAGE = Stage(name="data", sections=("data", "prompt", "tokenizer"), units=single_unit("data"),
              inputs=lambda config, unit: [], outputs=_outputs, run=run,
              key_extra=lambda config, unit: fingerprint(external_inputs(config)),
              required=_required, check=check)
