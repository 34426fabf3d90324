"""The dataset as the rest of the system sees it: decoded examples per split plus the catalogue.

  ds = load_dataset(config.data, data_dir)      # builds the TFDS dataset once, then reads it
  ds.examples("train")[0].candidate_titles
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from rosepo_jax import files, multihost
from rosepo_jax.data import records, synthetic, tfds_builders

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MANUAL_DIRS = {"lastfm": "../shared/data/llara_lastfm",
                       "movielens100k": "../shared/data/movielens_100k"}


@dataclasses.dataclass(frozen=True)
class Example:
  index: int
  user: int
  history: tuple[int, ...]  # oldest first
  target: int
  candidates: tuple[int, ...]  # target exactly once
  history_titles: tuple[str, ...]
  target_title: str
  candidate_titles: tuple[str, ...]


@dataclasses.dataclass
class RecDataset:
  name: str
  titles: list[str]
  train_popularity: np.ndarray
  duplicate_titles: int
  info: dict
  sources: dict  # split -> TFDS ArrayRecordDataSource
  # split -> subset name -> example indices (records.RawDataset.eval_subsets)
  eval_subsets: dict = dataclasses.field(default_factory=dict)
  _cache: dict = dataclasses.field(default_factory=dict)

  @property
  def num_items(self) -> int:
    return len(self.titles)

  def size(self, split: str) -> int:
    if split not in self.sources:
      raise KeyError(f"{self.name}: no split {split!r}; splits are {sorted(self.sources)}")
    return len(self.sources[split])

  def examples_at(self, split: str, indices) -> list[Example]:
    """The examples of `split` at `indices` (only those are read unless the split is cached)."""
    indices = [int(i) for i in indices]
    have = self._cache.get(split, [])
    if all(i < len(have) for i in indices):
      return [have[i] for i in indices]
    self.size(split)  # a clear KeyError for an unknown split
    return [_decode(r) for r in self.sources[split].__getitems__(indices)]

  def examples(self, split: str, limit: int = 0) -> list[Example]:
    """The split's examples in index order; only the first `limit` when > 0 (only those are
    read: a stage that uses a prefix of a large split does not decode all of it)."""
    self.size(split)  # a clear KeyError for an unknown split
    source = self.sources[split]
    want = min(limit, len(source)) if limit > 0 else len(source)
    have = self._cache.get(split, [])
    if len(have) < want:
      have = have + [_decode(r) for r in source.__getitems__(list(range(len(have), want)))]
      self._cache[split] = have
    return have if want == len(have) else have[:want]


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _decode(r: dict) -> Example:
  return Example(
      index=int(r["index"]), user=int(r["user"]),
      history=tuple(int(i) for i in r["history"]), target=int(r["target"]),
      candidates=tuple(int(i) for i in r["candidates"]),
      history_titles=tuple(_text(t) for t in r["history_titles"]),
      target_title=_text(r["target_title"]),
      candidate_titles=tuple(_text(t) for t in r["candidate_titles"]))


def resolve_path(path: str | None) -> str | None:
  """Relative paths in configs are relative to the repository root."""
  if not path:
    return None
  return path if os.path.isabs(path) else os.path.normpath(os.path.join(REPO_ROOT, path))


def builder_params(data_cfg) -> dict:
  """The parameters that determine the data (hashed into the TFDS config name), from the typed
  `config.data` section (`rosepo_jax.config.DataConfig`). Paths as configured, not resolved: the
  same config in another checkout names the same dataset (the data stage's key holds the
  content of the files, `workdir.fingerprint`)."""
  name = data_cfg.name
  p = {"seed": data_cfg.seed, "num_candidates": data_cfg.num_candidates,
       "max_history": data_cfg.max_history, "min_history": data_cfg.min_history}
  if name == "lastfm":
    p["reader"] = records.LASTFM_READER_VERSION  # a changed reader is a different dataset
    if data_cfg.candidates_dir:
      p["candidates_dir"] = data_cfg.candidates_dir
  if name == "movielens100k":
    for key in ("split_file", "eval_rows_dir"):
      if getattr(data_cfg, key):
        p[key] = getattr(data_cfg, key)
  if name == "synthetic":
    p["world"] = dataclasses.asdict(data_cfg.world)
    p["generator"] = synthetic.GENERATOR_VERSION  # a changed generator is a different dataset
  return p


def manual_dir_of(data_cfg) -> str | None:
  return resolve_path(data_cfg.manual_dir or DEFAULT_MANUAL_DIRS.get(data_cfg.name))


def load_dataset(data_cfg, data_dir: str) -> RecDataset:
  """Prepares (first call) and opens the dataset described by `config.data` under `data_dir`.

  A gs:// `data_dir` is read through a local copy (`files.local_mirror`: TFDS's array_record
  reader needs local files); a dataset built here is copied up by the leader.
  """
  local = files.local_mirror(data_dir)
  builder = tfds_builders.prepare(data_cfg.name, builder_params(data_cfg), local,
                                  manual_dir_of(data_cfg))
  if files.is_remote(data_dir) and multihost.is_leader():
    built = files.join(data_dir, os.path.relpath(os.fspath(builder.data_dir), local))
    if not files.isfile(files.join(built, "dataset_info.json")):
      files.copy(os.fspath(builder.data_dir), built)
  meta = builder.info.metadata
  return RecDataset(name=data_cfg.name, titles=list(meta["titles"]),
                    train_popularity=np.asarray(meta["train_popularity"], np.int64),
                    duplicate_titles=int(meta["duplicate_titles"]), info=dict(meta["info"]),
                    sources={s: builder.as_data_source(split=s) for s in records.SPLITS},
                    eval_subsets={split: {name: [int(i) for i in idx] for name, idx in v.items()}
                                  for split, v in dict(meta.get("eval_subsets") or {}).items()})


def split_stats(examples: list[Example]) -> dict:
  items = {i for e in examples for i in e.history} | {e.target for e in examples}
  return {"examples": len(examples), "users": len({e.user for e in examples}),
          "items": len(items),
          "mean_history_len": float(np.mean([len(e.history) for e in examples])) if examples
          else 0.0}
