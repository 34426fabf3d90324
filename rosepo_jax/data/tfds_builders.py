"""TFDS builders (array_record, read with data sources; no TensorFlow) for every dataset.

Each example: index, user, history ids (oldest first), target id, candidate ids (target once,
seeded per example), and the titles of all of them. Dataset-level metadata (catalogue titles,
training popularity, duplicate titles resolved, reader counts, eval subsets) is stored in the TFDS
metadata.
The builder config's name is a hash of every parameter that changes the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

from rosepo_jax.data import records, synthetic
from rosepo_jax.data.candidates import sample_candidates

VERSION = "1.0.0"


@dataclasses.dataclass(eq=False)
class RecConfig(tfds.core.BuilderConfig):
  params: dict = dataclasses.field(default_factory=dict)


def make_config(params: dict) -> RecConfig:
  digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  return RecConfig(name=f"p{digest}", version=VERSION, params=params)


def _features(num_candidates: int):
  text = tfds.features.Text()
  return tfds.features.FeaturesDict({
      "index": np.int64,
      "user": np.int64,
      "history": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "target": np.int32,
      "candidates": tfds.features.Tensor(shape=(num_candidates,), dtype=np.int32),
      "history_titles": tfds.features.Sequence(text),
      "target_title": text,
      "candidate_titles": tfds.features.Sequence(text),
  })


class _RecBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared machinery; subclasses implement `read_raw`."""
  VERSION = tfds.core.Version(VERSION)
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Point config.data.manual_dir at the dataset's files."
  BUILDER_CONFIGS = []

  def read_raw(self, manual_dir: str | None, p: dict) -> records.RawDataset:
    raise NotImplementedError

  def _info(self):
    p = self.builder_config.params
    return tfds.core.DatasetInfo(builder=self, features=_features(p["num_candidates"]),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    p = self.builder_config.params
    manual_dir = str(dl_manager.manual_dir) if self.needs_manual_dir else None
    raw = self.read_raw(manual_dir, p)
    records.check_eval_splits(raw, manual_dir or f"the {self.name} dataset")
    self.info.metadata.update({
        "titles": raw.titles, "train_popularity": raw.train_popularity.tolist(),
        "duplicate_titles": raw.duplicate_titles, "info": raw.info, "params": p,
        "eval_subsets": raw.eval_subsets})
    return {split: self._generate_examples(raw, split) for split in records.SPLITS}

  def _generate_examples(self, raw: records.RawDataset, split: str):
    p = self.builder_config.params
    frozen = raw.frozen_candidates.get(split)
    for index, w in enumerate(raw.splits[split]):
      cands = frozen[index] if frozen else sample_candidates(
          raw.num_items, w.history, w.target, p["num_candidates"], p["seed"], split, index)
      yield index, {
          "index": index, "user": w.user, "history": np.asarray(w.history, np.int32),
          "target": w.target, "candidates": np.asarray(cands, np.int32),
          "history_titles": [raw.titles[i] for i in w.history],
          "target_title": raw.titles[w.target],
          "candidate_titles": [raw.titles[i] for i in cands]}

  needs_manual_dir = True
  required_files: tuple[str, ...] = ()


class RosepoLastfm(_RecBuilder):
  required_files = records.READER_FILES["lastfm"][0]

  def read_raw(self, manual_dir, p):
    return records.read_lastfm(manual_dir, p["min_history"], p["max_history"],
                               candidates_dir=p.get("candidates_dir"),
                               num_candidates=p["num_candidates"])


class RosepoMovielens100k(_RecBuilder):
  required_files = records.READER_FILES["movielens100k"][0]

  def read_raw(self, manual_dir, p):
    return records.read_movielens(manual_dir, p["min_history"], p["max_history"],
                                  split_file=p.get("split_file"),
                                  eval_rows_dir=p.get("eval_rows_dir"), seed=p["seed"])


class RosepoGeneric(_RecBuilder):
  required_files = records.READER_FILES["generic"][0]

  def read_raw(self, manual_dir, p):
    return records.read_generic(manual_dir, p["min_history"], p["max_history"])


class RosepoSynthetic(_RecBuilder):
  needs_manual_dir = False

  def read_raw(self, manual_dir, p):
    world = synthetic.WorldConfig(**p.get("world", {}))
    return synthetic.build_world(world, p["seed"], p["min_history"], p["max_history"])


BUILDERS = {"lastfm": RosepoLastfm, "movielens100k": RosepoMovielens100k,
            "generic": RosepoGeneric, "synthetic": RosepoSynthetic}


def prepare(name: str, params: dict, data_dir: str, manual_dir: str | None = None
            ) -> tfds.core.DatasetBuilder:
  """Builds (once) and returns the TFDS builder of dataset `name` with `params`."""
  if name not in BUILDERS:  # config.data.name is validated before any stage
    raise ValueError(f"config.data.name={name!r}; expected one of {sorted(BUILDERS)}")
  cls = BUILDERS[name]
  builder = cls(data_dir=data_dir, config=make_config(params))
  if cls.needs_manual_dir:
    if not manual_dir or not os.path.isdir(manual_dir):
      raise records.MissingFileError(
          f"config.data.manual_dir: {manual_dir!r} is not a folder; set it to the folder "
          f"holding the {name} files {list(cls.required_files)}")
    records.require_files(manual_dir, list(cls.required_files), name)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  _remove_incomplete(builder)  # left by a build that was killed: never data
  try:
    builder.download_and_prepare(file_format="array_record", download_config=download_config)
  finally:
    _remove_incomplete(builder)
  return builder


def _remove_incomplete(builder) -> None:
  """Removes TFDS's `incomplete.*` build folders beside the builder's version folder."""
  parent = os.path.dirname(os.path.normpath(builder.data_dir))
  if os.path.isdir(parent):
    for name in os.listdir(parent):
      if name.startswith("incomplete."):
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
