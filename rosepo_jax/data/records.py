"""Raw readers: files on disk -> a catalogue of unique titles and per-split interaction windows.

Every reader returns a `RawDataset`. Errors name the file, the line (1-based) and the field, and
say what was expected. Nothing is ever unpickled. Titles are made unique deterministically
(`unique_titles`); how many were changed is recorded.

Readers:
  read_lastfm      LLaRA LastFM (train_data/Val_data/Test_data.jsonl + id2name.txt), optionally with
                   S-DPO's frozen "cans20" candidates for val/test, and LLaRA's one-row-per-user
                   eval subsets (jsonl/{Val,Test}_data_last.jsonl) when present.
  read_movielens   raw MovieLens-100K (u.data + u.item, ISO-8859-1), user-level split from LLaRA's
                   split_users.json (val/test rows from LLaRA's jsonl) or a seeded 80/10/10 split.
  read_generic     train/val/test.jsonl ({"seq": [...], "next": id}) + id2name.txt (+ meta.json).
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import json
import os
import re
import unicodedata

import numpy as np

from rosepo_jax import metrics
from rosepo_jax.errors import InputError

SPLITS = ("train", "val", "test")
_MAX_USER = 2 ** 63  # user ids are stored as int64
MIN_EVAL_USERS = 2  # validation fits tau and test intervals resample users: one user is no sample

# The files each reader reads, relative to its folder: (required, read when present).
READER_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "lastfm": (("id2name.txt", "jsonl/train_data.jsonl", "jsonl/Val_data.jsonl",
                "jsonl/Test_data.jsonl"), ("jsonl/Val_data_last.jsonl", "jsonl/Test_data_last.jsonl")),
    "movielens100k": (("u.data", "u.item"), ()),
    "generic": (("train.jsonl", "val.jsonl", "test.jsonl", "id2name.txt"), ("meta.json",)),
}
SDPO_CANDIDATE_FILES = ("lastfm-val.json", "lastfm-test.json")  # in data.candidates_dir
LLARA_EVAL_ROW_FILES = ("Val_data.jsonl", "Test_data.jsonl")  # in data.eval_rows_dir


def input_files(name: str, manual_dir: str | None, candidates_dir: str | None = None,
                split_file: str | None = None, eval_rows_dir: str | None = None) -> list[str]:
  """Every file the reader of dataset `name` reads (or would read, were it present)."""
  out = []
  if name in READER_FILES and manual_dir:
    out += [os.path.join(manual_dir, f) for group in READER_FILES[name] for f in group]
  if candidates_dir:
    out += [os.path.join(candidates_dir, f) for f in SDPO_CANDIDATE_FILES]
  if split_file:
    out.append(split_file)
  if eval_rows_dir:
    out += [os.path.join(eval_rows_dir, f) for f in LLARA_EVAL_ROW_FILES]
  return out


@dataclasses.dataclass(frozen=True)
class Window:
  """One example before candidates: a user's recent history (oldest first) and the next item."""
  user: int
  history: tuple[int, ...]
  target: int


@dataclasses.dataclass
class RawDataset:
  titles: list[str]  # item id -> unique title
  splits: dict[str, list[Window]]
  train_popularity: np.ndarray  # [num_items] training-split interaction counts
  duplicate_titles: int = 0  # titles changed to make them unique
  frozen_candidates: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)  # reader-specific counts for stats
  # split -> subset name -> example indices of that split (e.g. LLaRA's one-row-per-user rows),
  # evaluated as a subset of the split's predictions.
  eval_subsets: dict[str, dict[str, list[int]]] = dataclasses.field(default_factory=dict)

  @property
  def num_items(self) -> int:
    return len(self.titles)


class DataError(InputError, ValueError):
  """Malformed input; the message names file, line and field."""


class MissingFileError(InputError, FileNotFoundError):
  """An input file that is not where the config says."""


def require_files(folder: str, names: list[str], what: str) -> None:
  missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
  if missing:
    raise MissingFileError(f"{what}: missing file(s) {missing} in {os.path.abspath(folder)}; "
                            f"expected {names} there")


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text) of a UTF-8 text file (a leading byte-order mark is skipped); a byte
  that is not UTF-8 is a DataError naming the line and column."""
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # the UTF-8 BOM some editors write
      try:
        yield lineno, raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: byte {raw[e.start:e.start + 1]!r} at column "
                        f"{e.start + 1} is not UTF-8 (save the file as UTF-8)") from None


def _jsonl(path: str) -> Iterator[tuple[int, dict]]:
  for lineno, line in _lines(path):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
      raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    yield lineno, row


def _is_id(x) -> bool:
  """An item id is a JSON integer; true/false are not ids."""
  return isinstance(x, int) and not isinstance(x, bool)


def _field(row: dict, name: str, path: str, lineno: int, kind):
  if name not in row:
    raise DataError(f"{path}:{lineno}: field {name!r} is missing")
  value = row[name]
  ok = (isinstance(value, int) and not isinstance(value, bool)) if kind is int else \
      isinstance(value, kind)
  if not ok:
    raise DataError(f"{path}:{lineno}: field {name!r} must be {kind.__name__}, got {value!r}")
  return value


def _check_ids(ids, num_items: int, path: str, lineno: int, name: str, allowed=()) -> None:
  bad = [i for i in ids if not (_is_id(i) and (0 <= i < num_items or i in allowed))]
  if bad:
    extra = f" or padding {sorted(allowed)}" if allowed else ""
    raise DataError(f"{path}:{lineno}: field {name!r} has item ids {bad[:5]} outside the "
                    f"catalogue [0, {num_items}){extra}")


_ID = re.compile(r"-?[0-9]+")  # ASCII digits only: int() also takes "١٢" and "1_000"
# Characters a title may not hold: controls (tabs and line breaks included) and line or
# paragraph separators (U+2028, U+2029), which split lines in prompts and in JSON lines readers.
_BREAKING = {"Cc", "Zl", "Zp"}
# Characters that show nothing: a title made of these alone reads as empty.
_INVISIBLE = {"Cf", "Zs", "Mn", "Me", "Cn", "Co", "Cs"}


def title_problem(title: str) -> str:
  """What makes `title` unusable as a catalogue title, or "": a control or line-separator
  character anywhere, or no visible character at all (an empty answer would then match it)."""
  for k, ch in enumerate(title):
    if unicodedata.category(ch) in _BREAKING:
      return (f"holds the control or line-separator character U+{ord(ch):04X} at column "
              f"{k + 1}")
  if all(unicodedata.category(ch) in _INVISIBLE for ch in title) or not metrics.normalize(title):
    return "has no visible character"
  return ""


def read_id2name(path: str) -> list[str]:
  """``id::title`` lines -> titles indexed by id (ids must be exactly 0..n-1)."""
  titles: dict[int, str] = {}
  for lineno, line in _lines(path):
    line = line.rstrip("\r\n")
    if not line.strip():
      continue
    key, sep, title = line.partition("::")
    if not sep or not _ID.fullmatch(key.strip()):
      raise DataError(f"{path}:{lineno}: expected 'id::title' with an integer id, got "
                      f"{line[:80]!r}")
    item = int(key)
    if item < 0:
      raise DataError(f"{path}:{lineno}: item id {item} is negative; ids are 0, 1, 2, ...")
    if item in titles:
      raise DataError(f"{path}:{lineno}: item id {item} appears twice")
    problem = title_problem(title.strip())
    if problem:
      raise DataError(f"{path}:{lineno}: the title of item {item} {problem}")
    titles[item] = title.strip()
  if not titles:
    raise DataError(f"{path}: no 'id::title' lines")
  if max(titles) != len(titles) - 1:  # distinct ids >= 0: a gap below the count, never range(max)
    gaps = [i for i in range(len(titles)) if i not in titles][:5]
    raise DataError(f"{path}: item ids must be 0..{len(titles) - 1} without gaps (one per line); "
                    f"missing {gaps}, max id {max(titles)}")
  return [titles[i] for i in range(len(titles))]


def check_eval_splits(raw: RawDataset, source: str) -> None:
  """A DataError unless validation and test each hold MIN_EVAL_USERS users or more: tau is fitted
  on validation and the report's intervals are a bootstrap over test users, and neither means
  anything on one user's rows."""
  for split in ("val", "test"):
    windows = raw.splits.get(split, [])
    users = len({w.user for w in windows})
    if users < MIN_EVAL_USERS:
      use = ("the oracle's temperature is fitted on it" if split == "val"
             else "the report's intervals resample its users")
      raise DataError(f"{source}: split {split!r} holds {len(windows)} example(s) of {users} "
                      f"user(s); expected at least {MIN_EVAL_USERS} users ({use})")


def unique_titles(titles: list[str], years: list[str | None] | None = None) -> tuple[list[str], int]:
  """Makes titles unique: duplicates get " (YEAR)" when that separates them, else " [#id]".

  Titles are duplicates when the evaluator cannot tell them apart (`metrics.normalize`: case,
  surrounding quotes and whitespace), since neither could ever be answered validly.
  Deterministic (by id). Returns (titles, number of titles changed). Never merges items.
  """
  def dupes(ts):
    seen: dict[str, list[int]] = {}
    for i, t in enumerate(ts):
      seen.setdefault(metrics.normalize(t), []).append(i)
    return {i for ids in seen.values() if len(ids) > 1 for i in ids}

  out = list(titles)
  if years is not None:
    for i in dupes(out):
      if years[i]:
        out[i] = f"{titles[i]} ({years[i]})"
  for i in dupes(out):
    out[i] = f"{out[i]} [#{i}]"
  changed = sum(a != b for a, b in zip(out, titles))
  still = sorted(dupes(out))
  if still:
    raise DataError(f"titles of items {still[:5]} are still equal after disambiguation "
                    f"({[out[i] for i in still[:5]]}); rename them in the titles file")
  return out, changed


def _dropped(count: int, min_history: int) -> dict[str, int]:
  """A split's dropped rows by reason, for the data stats (empty when none were dropped)."""
  return {f"history shorter than min_history={min_history}": count} if count else {}


def _windows_of(items: list[int], user: int, min_history: int, max_history: int) -> list[Window]:
  """Sliding windows over one user's time-ordered items: each item is a target once."""
  return [Window(user, tuple(items[max(0, i - max_history):i]), items[i])
          for i in range(min_history, len(items))]


# ------------------------------------------------------------------------------------------------
# LastFM (LLaRA form)

# Bumped whenever read_lastfm's output changes (it is part of the dataset's TFDS config hash).
LASTFM_READER_VERSION = 3
LLARA_LAST_SUBSET = "llara_last"


def _read_llara_rows(path: str, num_items: int, pad: int, pair: bool = False
                     ) -> list[tuple[int, list[int], int]]:
  """(line, history ids oldest first, target) for each row of a LLaRA jsonl file.

  `pair` rows (MovieLens) hold [item, rating] pairs instead of ids.
  """
  rows = []
  for lineno, row in _jsonl(path):
    seq = _field(row, "seq", path, lineno, list)
    n = _field(row, "len_seq", path, lineno, int)
    nxt = row.get("next")
    if pair:
      if not (all(isinstance(p, list) and len(p) == 2 for p in seq) and isinstance(nxt, list)
              and len(nxt) == 2):
        raise DataError(f"{path}:{lineno}: fields 'seq'/'next' must hold [item, rating] pairs")
      seq, nxt = [p[0] for p in seq], nxt[0]
    if not isinstance(nxt, int) or isinstance(nxt, bool):
      raise DataError(f"{path}:{lineno}: field 'next' must be an item id, got {nxt!r}")
    if not 0 <= n <= len(seq):
      raise DataError(f"{path}:{lineno}: field 'len_seq'={n} is outside [0, {len(seq)}]")
    _check_ids(seq, num_items, path, lineno, "seq", allowed=(pad,))
    _check_ids([nxt], num_items, path, lineno, "next")
    history = [i for i in seq[:n] if i != pad]
    if any(i != pad for i in seq[n:]):
      raise DataError(f"{path}:{lineno}: field 'seq' has item ids after position len_seq={n}; "
                      f"expected right padding with {pad}")
    rows.append((lineno, history, nxt))
  return rows


def read_lastfm(manual_dir: str, min_history: int = 3, max_history: int = 10,
                candidates_dir: str | None = None, num_candidates: int = 20) -> RawDataset:
  """LLaRA LastFM. Users are delimited by their first row (empty history), as LLaRA writes them.

  With `candidates_dir` (S-DPO's lastfm-{val,test}.json), val/test take those frozen candidates;
  each record must match our example (history titles, target) in order.
  """
  names, last_names = READER_FILES["lastfm"]
  require_files(manual_dir, list(names), "lastfm")
  titles = read_id2name(os.path.join(manual_dir, names[0]))
  titles, changed = unique_titles(titles)
  num_items, pad = len(titles), len(titles)
  splits, popularity = {}, np.zeros(num_items, np.int64)
  info: dict = {"dropped_rows": {}}
  user = -1
  for split, name in zip(SPLITS, names[1:]):
    windows = []
    rows = _read_llara_rows(os.path.join(manual_dir, name), num_items, pad)
    for _, history, target in rows:
      if not history:  # a user's first row: all padding
        user += 1
      if split == "train":
        popularity[target] += 1  # every interaction is some row's target
      if len(history) >= min_history:
        windows.append(Window(user, tuple(history[-max_history:]), target))
    splits[split] = windows
    info[f"{split}_rows"] = len(rows)
    info["dropped_rows"][split] = _dropped(len(rows) - len(windows), min_history)
  raw = RawDataset(titles, splits, popularity, changed, info=info)
  for split, name in zip(("val", "test"), last_names):
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      raw.eval_subsets[split] = {LLARA_LAST_SUBSET: _match_rows(
          _read_llara_rows(path, num_items, pad), splits[split], path, split, max_history)}
  if candidates_dir:
    for split, name in zip(("val", "test"), SDPO_CANDIDATE_FILES):
      path = os.path.join(candidates_dir, name)
      raw.frozen_candidates[split] = read_sdpo_candidates(path, raw, split, num_candidates)
  return raw


def _match_rows(rows, windows: list[Window], path: str, split: str, max_history: int
                ) -> list[int]:
  """Index of the one `split` window equal (history, target) to each LLaRA row, in row order."""
  where = {}
  for k, w in enumerate(windows):
    where.setdefault((w.history, w.target), []).append(k)
  out = []
  for lineno, history, target in rows:
    found = where.get((tuple(history[-max_history:]), target), [])
    if len(found) != 1:
      raise DataError(f"{path}:{lineno}: expected exactly one {split} example with this row's "
                      f"history and target (a row with >= min_history items), found {len(found)}")
    out.append(found[0])
  return out


def read_sdpo_candidates(path: str, raw: RawDataset, split: str, num_candidates: int
                         ) -> list[list[int]]:
  """S-DPO cans20 JSON -> candidate ids per example, checked record by record against `raw`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"S-DPO candidates: {path} not found (expected lastfm-val.json and "
                            "lastfm-test.json in the candidates dir)")
  try:
    with open(path, encoding="utf-8") as f:
      records = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  windows = raw.splits[split]
  if not isinstance(records, list) or len(records) != len(windows):
    n = len(records) if isinstance(records, list) else type(records).__name__
    raise DataError(f"{path}: expected a JSON array of {len(windows)} records (one per {split} "
                    f"example), got {n}")
  by_title = {t: i for i, t in enumerate(raw.titles)}
  out = []
  for k, (rec, w) in enumerate(zip(records, windows)):
    where = f"{path}: record {k}"
    try:
      history, items, target = rec["historyList"].split("::"), rec["itemList"], rec["trueSelection"]
    except (KeyError, TypeError, AttributeError):
      raise DataError(f"{where}: expected fields historyList (str), itemList (list), "
                      "trueSelection (str)") from None
    if history != [raw.titles[i] for i in w.history] or target != raw.titles[w.target]:
      raise DataError(f"{where}: history/target do not match {split} example {k} "
                      f"(history {[raw.titles[i] for i in w.history]}, target "
                      f"{raw.titles[w.target]!r})")
    unknown = [t for t in items if t not in by_title]
    if unknown:
      raise DataError(f"{where}: field itemList has titles not in the catalogue: {unknown[:3]}")
    ids = [by_title[t] for t in items]
    if len(ids) != num_candidates or len(set(ids)) != len(ids) or ids.count(w.target) != 1:
      raise DataError(f"{where}: field itemList must hold {num_candidates} distinct titles "
                      "including the target once")
    out.append(ids)
  return out


# ------------------------------------------------------------------------------------------------
# MovieLens-100K (raw)

_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_ARTICLE = re.compile(r"^(.*), (The|A|An)$")


def movielens_title(raw_title: str) -> tuple[str, str | None]:
  """LLaRA's title form: drop a trailing " (YYYY)", move a trailing ", The/A/An" to the front."""
  m = _YEAR.match(raw_title)
  title, year = (m.group(1), m.group(2)) if m else (raw_title.strip(), None)
  a = _ARTICLE.match(title)
  if a:
    title = f"{a.group(2)} {a.group(1)}"
  return title, year


def read_movielens(manual_dir: str, min_history: int = 3, max_history: int = 10,
                   split_file: str | None = None, eval_rows_dir: str | None = None,
                   seed: int = 0) -> RawDataset:
  """MovieLens-100K from u.data/u.item, split by user.

  With `split_file` (LLaRA's split_users.json: val_users, test_users as u.data user ids) and
  `eval_rows_dir` (LLaRA's jsonl/{Val,Test}_data.jsonl), val/test are LLaRA's rows, each checked
  to be ratings of its listed user. Without them, a seeded 80/10/10 user split and each held-out
  user's last window. Train: every sliding window of every training user, in time order (ties by
  file order).
  """
  require_files(manual_dir, ["u.data", "u.item"], "movielens100k")
  item_path, data_path = os.path.join(manual_dir, "u.item"), os.path.join(manual_dir, "u.data")
  raw_titles, years = {}, {}
  with open(item_path, encoding="iso-8859-1") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.rstrip("\r\n").split("|")
      if len(fields) < 2 or not _ID.fullmatch(fields[0]) or int(fields[0]) < 1:
        raise DataError(f"{item_path}:{lineno}: expected 'movie id|title|...' with a movie id "
                        f">= 1, got {line[:60]!r}")
      problem = title_problem(fields[1].strip())
      if problem:
        raise DataError(f"{item_path}:{lineno}: field title {problem}")
      raw_titles[int(fields[0]) - 1], years[int(fields[0]) - 1] = movielens_title(fields[1])
  num_items = len(raw_titles)
  if max(raw_titles, default=-1) != num_items - 1:
    raise DataError(f"{item_path}: movie ids must be 1..{num_items} without gaps (max id "
                    f"{max(raw_titles, default=0) + 1})")
  titles, changed = unique_titles([raw_titles[i] for i in range(num_items)],
                                  [years[i] for i in range(num_items)])
  per_user: dict[int, list[tuple[int, int, int]]] = {}
  ratings = 0
  with open(data_path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.split()
      if len(fields) != 4 or not all(_ID.fullmatch(x) and x[0] != "-" for x in fields):
        raise DataError(f"{data_path}:{lineno}: expected 'user<TAB>item<TAB>rating<TAB>time' "
                        f"(4 integers), got {line.strip()[:60]!r}")
      u, item, rating, ts = map(int, fields)
      if not 1 <= item <= num_items:
        raise DataError(f"{data_path}:{lineno}: field item={item} is not a movie id in u.item "
                        f"(1..{num_items})")
      if not 1 <= rating <= 5:
        raise DataError(f"{data_path}:{lineno}: field rating={rating} is outside 1..5")
      per_user.setdefault(u, []).append((ts, lineno, item - 1))
      ratings += 1
  sequences = {u: [item for _, _, item in sorted(v)] for u, v in per_user.items()}
  users = sorted(sequences)
  if split_file:
    with open(split_file, encoding="utf-8") as f:
      split = json.load(f)
    for key in ("val_users", "test_users"):
      if not isinstance(split.get(key), list):
        raise DataError(f"{split_file}: field {key!r} must be a list of u.data user ids")
    held = {"val": split["val_users"], "test": split["test_users"]}
  else:
    order = np.random.default_rng(seed).permutation(users).tolist()
    n = len(users) // 10
    held = {"val": sorted(order[:n]), "test": sorted(order[n:2 * n])}
  unknown = [u for s in held.values() for u in s if u not in sequences]
  if unknown:
    raise DataError(f"{split_file}: user ids {unknown[:5]} do not occur in u.data")
  held_out = set(held["val"]) | set(held["test"])
  train = [w for u in users if u not in held_out
           for w in _windows_of(sequences[u], u, min_history, max_history)]
  popularity = np.bincount([i for u in users if u not in held_out for i in sequences[u]],
                           minlength=num_items).astype(np.int64)
  splits = {"train": train}
  dropped = {"train": {}}
  for (name, held_users), rows_file in zip(held.items(), LLARA_EVAL_ROW_FILES):
    if eval_rows_dir:
      path = os.path.join(eval_rows_dir, rows_file)
      require_files(eval_rows_dir, [os.path.basename(path)], "movielens100k eval rows")
      rows = _read_llara_rows(path, num_items, num_items, pair=True)
      if len(rows) != len(held_users):
        raise DataError(f"{path}: {len(rows)} rows but {split_file} lists {len(held_users)} "
                        f"{name} users (one row each, in order)")
      windows = []
      for (lineno, history, target), u in zip(rows, held_users):
        if not set(history) | {target} <= set(sequences[u]):
          raise DataError(f"{path}:{lineno}: items are not all rated by user {u} in u.data")
        if len(history) >= min_history:
          windows.append(Window(u, tuple(history[-max_history:]), target))
    else:
      windows = [_windows_of(sequences[u], u, min_history, max_history)[-1] for u in held_users
                 if len(sequences[u]) > min_history]
    splits[name] = windows
    dropped[name] = _dropped(len(held_users) - len(windows), min_history)
  return RawDataset(titles, splits, popularity, changed,
                    info={"ratings": ratings, "users_total": len(users), "dropped_rows": dropped})


# ------------------------------------------------------------------------------------------------
# Generic


def read_generic(manual_dir: str, min_history: int = 3, max_history: int = 10) -> RawDataset:
  """train/val/test.jsonl (one {"seq": [ids oldest first], "next": id[, "user": id]} a line) and
  id2name.txt; meta.json may name a "padding_id" dropped from seq."""
  names = [f"{s}.jsonl" for s in SPLITS] + ["id2name.txt"]
  require_files(manual_dir, names, "generic dataset")
  titles, changed = unique_titles(read_id2name(os.path.join(manual_dir, "id2name.txt")))
  pad = None
  meta_path = os.path.join(manual_dir, "meta.json")
  if os.path.isfile(meta_path):
    try:
      meta = json.loads("".join(line for _, line in _lines(meta_path)))
    except json.JSONDecodeError as e:
      raise DataError(f"{meta_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
      raise DataError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    pad = meta.get("padding_id")
    if pad is not None and not _is_id(pad):
      raise DataError(f"{meta_path}: field 'padding_id' must be an integer, got {pad!r}")
    if pad is not None and 0 <= pad < len(titles):
      raise DataError(f"{meta_path}: field 'padding_id' is {pad}, the id of catalogue item "
                      f"{titles[pad]!r} in id2name.txt; padding must be an id outside "
                      f"[0, {len(titles)})")
  splits, popularity = {}, np.zeros(len(titles), np.int64)
  dropped = {}
  for split in SPLITS:
    path = os.path.join(manual_dir, f"{split}.jsonl")
    windows, short = [], 0
    for lineno, row in _jsonl(path):
      seq = _field(row, "seq", path, lineno, list)
      target = _field(row, "next", path, lineno, int)
      user = _field(row, "user", path, lineno, int) if "user" in row else lineno - 1
      if not 0 <= user < _MAX_USER:
        raise DataError(f"{path}:{lineno}: field 'user'={user}: expected an integer in "
                        f"[0, 2**63)")
      _check_ids(seq, len(titles), path, lineno, "seq", allowed=() if pad is None else (pad,))
      _check_ids([target], len(titles), path, lineno, "next")
      history = [i for i in seq if i != pad]
      if split == "train":
        popularity[target] += 1
      if len(history) >= min_history:
        windows.append(Window(user, tuple(history[-max_history:]), target))
      else:
        short += 1
    if not windows:
      raise DataError(f"{path}: no examples left in split {split!r}: {short} row(s), all with "
                      f"fewer than min_history={min_history} history items"
                      if short else f"{path}: split {split!r} has no rows")
    splits[split] = windows
    dropped[split] = _dropped(short, min_history)
  return RawDataset(titles, splits, popularity, changed, info={"dropped_rows": dropped})
