"""The run folder: every path under DIR, named once; the units of work; the context stages share.

Layout (owner unit in brackets; every file under DIR has one owner, and nothing else is ever
removed: a file a user put among a unit's outputs stops the command before any work):
  DIR/data/{tfds,tokenizer,stats.json,row_lengths.npz}      [data] (DIR/data itself may hold the
                                                            user's raw files)
  DIR/sft/{checkpoints,tb,metrics.jsonl,model,adapter}      [sft]
  DIR/oracle/{model,metrics.json,calibration.json,folds.json,folds/<k>}   [oracle]
  DIR/preference/{pairs.array_record,stats.json}            [negatives]
  DIR/<method>/{reference.npz,checkpoints,tb,metrics.jsonl,model,adapter}   [dpo/<method>]
  DIR/eval/<run>.json, DIR/eval/<run>.predictions.jsonl     [eval/<run>]
  DIR/export/<run>/                                         [export/<run>]
  DIR/report.md, DIR/plots/, DIR/eval/summary.json          [report]
  DIR/stages/<unit>.json                                    the runner's markers
  DIR/.staging/<unit>/                                      the runner's: a running unit's outputs
  DIR/run.lock                                              the runner's: the launch holding DIR

With config.seeds, the units of the stages marked `per_seed` (sft, negatives, dpo, eval, export) run
once per seed, and what they write moves under DIR/seed_<s>/ (DIR/seed_<s>/sft, .../eval/<run>.json,
...); data, oracle, the report and the markers stay in DIR.

DIR is a local path or a gs:// URL: every file under it is read and written through
`rosepo_jax.files` (the helpers below; orbax and TensorBoard get `files.native` paths).

A `Stage` is what the runner (`rosepo_jax.pipeline`) knows of a stage module: the config keys it
reads, its units, the units each consumes, the paths each writes, and its `run`. `Context` holds
the typed config, the paths and what stages share, each opened once: the dataset, the tokenizer,
the exact prompt of an example and the encoded (prompt, response) ids of a split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import copy
import dataclasses
import hashlib
import io
import json
import os
from typing import Any

from array_record.python import array_record_module
import jax
import numpy as np

from rosepo_jax import files, multihost, sharding
from rosepo_jax.config import Config, ConfigError
from rosepo_jax.data import dataset as dataset_lib
from rosepo_jax.data import candidates as candidates_lib
from rosepo_jax.data.candidates import subset_indices
from rosepo_jax.data import lengths as lengths_lib
from rosepo_jax.data import prompts, synthetic
from rosepo_jax.data import tokenizer as tokenizer_lib
from rosepo_jax.data.batching import BatchShape
from rosepo_jax.data.codec import Codec
from rosepo_jax.data.records import SPLITS

STAGING = ".staging"  # DIR/.staging/<unit>/: a unit's outputs until they are swapped in


@dataclasses.dataclass(frozen=True)
class Unit:
  """A piece of work with its own marker: a stage, or a stage for one run ("dpo/rosepo"), for one
  seed of config.seeds ("seed_1/dpo/rosepo") or for the one run without seeds (seed None)."""
  stage: str
  run: str = ""
  seed: int | None = None

  @property
  def name(self) -> str:
    name = f"{self.stage}/{self.run}" if self.run else self.stage
    return name if self.seed is None else f"seed_{self.seed}/{name}"

  @property
  def file_name(self) -> str:
    """The name as one path component ("seed_1.dpo.rosepo"): its marker and staging folder."""
    return self.name.replace("/", ".")


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage as the runner sees it. `sections`: dotted config keys hashed into each unit's key;
  `units(config)`, `inputs(config, unit)`, `outputs(paths, unit)`, `run(context, unit)`;
  `key_extra(config, unit)`: more of what a unit's result depends on (JSON-able), e.g. the
  fingerprint of the files it reads from outside DIR; `required`: the outputs whose absence makes
  a finished unit stale (default: all of `outputs`); `check(config)`: what the stage needs that
  no config value shows and no data is needed to see (files outside DIR it reads), checked
  before any stage runs when one of its units will run (an InputError naming the key)."""
  name: str
  sections: tuple[str, ...]
  units: Callable[[Config], list[Unit]]
  inputs: Callable[[Config, Unit], list[Unit]]
  outputs: Callable[["Paths", Unit], list[str]]
  run: Callable[["Context", Unit], Any]
  key_extra: Callable[[Config, Unit], Any] | None = None
  required: Callable[[Config, "Paths", Unit], list[str]] | None = None  # default: outputs
  per_seed: bool = False  # its units run once per seed of config.seeds
  check: Callable[[Config], None] | None = None

  def products(self, config: Config, paths: "Paths", unit: Unit) -> list[str]:
    """What must exist for the unit to count as done (a missing one reruns it)."""
    return self.required(config, paths, unit) if self.required else self.outputs(paths, unit)


def single_unit(stage: str) -> Callable[[Config], list[Unit]]:
  return lambda config: [Unit(stage)]


def model_unit(run: str) -> Unit:
  """The unit that trains run `run`'s model: sft, or the preference unit of a method."""
  return Unit("sft") if run == "sft" else Unit("dpo", run)


class Paths:
  """Every path under the run folder DIR; with a `seed`, the per-seed ones under DIR/seed_<seed>.

  `redirect` ({path: path}) moves a path and everything under it elsewhere: a running unit's
  outputs go to its staging folder (`staged`), so that the unit writes beside its previous
  outputs and the runner swaps the new ones in when the unit succeeds (`rosepo_jax.staging`).
  """

  def __init__(self, root: str, seed: int | None = None, redirect: dict[str, str] | None = None):
    self.root, self.seed = root, seed
    self.seed_root = root if seed is None else files.join(root, f"seed_{seed}")
    self.redirect = dict(redirect or {})

  def staged(self, redirect: dict[str, str]) -> "Paths":
    """These paths with `redirect` applied (a unit's outputs -> their staging places)."""
    return Paths(self.root, self.seed, redirect)

  def published(self, path: str) -> str:
    """Where a redirected `path` ends up once its unit's outputs are swapped in."""
    for src, dst in self.redirect.items():
      if path == dst or path.startswith(dst.rstrip("/") + "/") or path.startswith(
          dst + os.sep):
        return src + path[len(dst):]
    return path

  def _moved(self, path: str) -> str:
    for src, dst in self.redirect.items():
      if path == src or path.startswith(src.rstrip("/") + "/") or path.startswith(src + os.sep):
        return dst + path[len(src):]
    return path

  def _join(self, *parts: str) -> str:
    return self._moved(files.join(self.root, *parts))

  def _seeded(self, *parts: str) -> str:
    return self._moved(files.join(self.seed_root, *parts))

  # data
  @property
  def data(self) -> str:
    return self._join("data")

  @property
  def tfds(self) -> str:
    return self._join("data", "tfds")

  @property
  def tokenizer(self) -> str:
    return self._join("data", "tokenizer")

  @property
  def data_stats(self) -> str:
    return self._join("data", "stats.json")

  @property
  def row_lengths(self) -> str:
    return self._join("data", "row_lengths.npz")

  # training runs: "sft" and each preference method
  def run(self, run: str) -> str:
    return self._seeded(run)

  def model(self, run: str) -> str:
    return self._seeded(run, "model")

  def adapter(self, run: str) -> str:
    """A LoRA run's adapters alone, as a PEFT folder (`checkpoints.peft`)."""
    return self._seeded(run, "adapter")

  def metrics_log(self, run: str) -> str:
    return self._seeded(run, "metrics.jsonl")

  def reference(self, run: str) -> str:
    """Rejected ids and pi_ref log-probs of a random-pairs method, made by its own unit."""
    return self._seeded(run, "reference.npz")

  # oracle
  @property
  def oracle(self) -> str:
    return self._join("oracle")

  @property
  def oracle_model(self) -> str:
    return self._join("oracle", "model")

  @property
  def oracle_metrics(self) -> str:
    return self._join("oracle", "metrics.json")

  @property
  def oracle_calibration(self) -> str:
    return self._join("oracle", "calibration.json")

  @property
  def oracle_folds(self) -> str:
    """Cross-fitting: each training user's fold ({"folds": K, "user_fold": {user: k}})."""
    return self._join("oracle", "folds.json")

  def oracle_fold_model(self, k: int) -> str:
    """The fold oracle trained without the users of fold `k`."""
    return self._join("oracle", "folds", str(k))

  # negatives
  @property
  def negatives(self) -> str:
    return self._seeded("preference")

  @property
  def pairs(self) -> str:
    return self._seeded("preference", "pairs.array_record")

  @property
  def negatives_stats(self) -> str:
    return self._seeded("preference", "stats.json")

  # eval, export, report
  def eval_summary(self, run: str) -> str:
    return self._seeded("eval", f"{run}.json")

  def eval_predictions(self, run: str) -> str:
    return self._seeded("eval", f"{run}.predictions.jsonl")

  def export(self, run: str) -> str:
    return self._seeded("export", run)

  @property
  def eval_overall(self) -> str:
    """The report's figures over seeds and its paired differences (DIR/eval/summary.json)."""
    return self._join("eval", "summary.json")

  @property
  def report(self) -> str:
    return self._join("report.md")

  @property
  def plots(self) -> str:
    return self._join("plots")

  # the runner's own
  def marker(self, unit: Unit) -> str:
    """A finished unit's record: its key, run id and the files it wrote (`rosepo_jax.pipeline`)."""
    return files.join(self.root, "stages", unit.file_name + ".json")

  def staging(self, unit: Unit) -> str:
    """Where a running unit writes until its outputs are swapped in (`rosepo_jax.staging`)."""
    return files.join(self.root, STAGING, unit.file_name)

  @property
  def lock(self) -> str:
    """The launch that holds the run folder (`rosepo_jax.runlock`)."""
    return files.join(self.root, "run.lock")


# ------------------------------------------------------------------------------------------------
# Inputs from outside the run folder: their fingerprint goes into the reading unit's key.

_WHOLE_HASH_BYTES = 256 << 20  # larger files: size, mtime and the first and last MiB


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    if size <= _WHOLE_HASH_BYTES:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    else:
      h.update(f.read(1 << 20))
      f.seek(size - (1 << 20))
      h.update(f.read(1 << 20))
      h.update(str(os.path.getmtime(path)).encode())
  return f"{size}:{h.hexdigest()[:16]}"


def fingerprint(paths: Sequence[str]) -> list[Any]:
  """The content of files and folders read from outside DIR, one entry per path in order ("size:
  sha256" of a file; {relative file: "size:sha256"} of a folder; None for a missing path): a
  changed, added or removed file changes it. Content only, neither mtime nor where the path is, so
  a copy of the same data (another checkout, another mount point) is the same input."""
  out: list[Any] = []
  for path in paths:
    if not path:
      continue
    if os.path.isfile(path):
      out.append(_file_digest(path))
    elif os.path.isdir(path):
      digests = {}
      for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
          full = os.path.join(root, name)
          digests[os.path.relpath(full, path)] = _file_digest(full)
      out.append(digests)
    else:
      out.append(None)
  return out


# ------------------------------------------------------------------------------------------------
# Files under DIR (through `files`, so DIR may be gs://): atomic writes by the leader (process
# 0); reads.


def write_json(path: str, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))


def write_text(path: str, text: str) -> None:
  if multihost.is_leader():
    files.write_text(path, text)


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
  write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str, what: str = "") -> Any:
  if not files.isfile(path):
    raise FileNotFoundError(f"{path} not found{'; ' + what if what else ''}")
  return json.loads(files.read_text(path))


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file. Lines end at "\n" alone: JSON escapes it inside strings,
  but not U+2028, U+0085 and the other breaks `str.splitlines` would split a record at."""
  return [json.loads(line) for line in files.read_text(path).split("\n") if line.strip()]


def write_records(path: str, rows: Sequence[dict]) -> None:
  """JSON records in an array_record file, atomically."""
  if not multihost.is_leader():
    return
  with files.local_output(path) as local:
    writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
    for row in rows:
      writer.write(json.dumps(row).encode())
    writer.close()


def read_records(path: str, what: str = "") -> list[dict]:
  if not files.isfile(path):
    raise FileNotFoundError(f"{path} not found{'; ' + what if what else ''}")
  with files.local_copy(path) as local:
    reader = array_record_module.ArrayRecordReader(local)
    try:
      return [json.loads(r) for r in reader.read_all()]
    finally:
      reader.close()


def save_npz(path: str, **arrays) -> None:
  if not multihost.is_leader():
    return
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  files.write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an .npz file written by `save_npz`."""
  with np.load(io.BytesIO(files.read_bytes(path))) as z:
    return {key: z[key] for key in z.files}


# ------------------------------------------------------------------------------------------------
# The shared context.


@dataclasses.dataclass
class _Opened:
  """What a Context opens once, shared by its per-seed and staged copies."""
  dataset: dataset_lib.RecDataset | None = None
  tokenizer: Any = None
  codec: Codec | None = None
  encoded: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = dataclasses.field(
      default_factory=dict)
  max_seq_len: int = 0
  title_format: str = ""
  world_truth: dict[str, np.ndarray] | None = None


class Context:
  """The typed config, the run folder's paths, and the dataset / tokenizer / encoded examples,
  each opened once and shared by the stages of one `pipeline.run`."""

  def __init__(self, config: Config, workdir: str):
    self.config = config
    self.paths = Paths(workdir)
    self._seeds: dict[int, Context] = {}
    self._opened = _Opened()

  def for_seed(self, seed: int | None) -> "Context":
    """The context of seed `seed`'s units: `config.for_seed(seed)` and the per-seed paths
    (DIR/seed_<seed>); the dataset, tokenizer and encoded examples are this context's. None: this
    context."""
    if seed is None:
      return self
    if seed not in self._seeds:
      other = copy.copy(self)
      other.config = self.config.for_seed(seed)
      other.paths = Paths(self.paths.root, seed, self.paths.redirect)  # a staged unit's stays so
      other._seeds = {}  # pylint: disable=protected-access
      self._seeds[seed] = other
    return self._seeds[seed]

  def staged(self, redirect: dict[str, str]) -> "Context":
    """This context with `redirect` applied to its paths (`Paths.staged`): a running unit's. What
    it opens is shared with this context."""
    other = copy.copy(self)
    other.paths, other._seeds = self.paths.staged(redirect), {}  # pylint: disable=protected-access
    return other

  def forget_data(self) -> None:
    """Drops the dataset, tokenizer and everything derived from them, in this context and every
    copy (DIR/data is about to be or was just replaced): the next use opens them again."""
    self._opened.__init__()  # pylint: disable=unnecessary-dunder-call

  @property
  def dataset(self) -> dataset_lib.RecDataset:
    """The TFDS dataset under DIR/data/tfds (prepared on first use: the data stage)."""
    if self._opened.dataset is None:
      self._opened.dataset = dataset_lib.load_dataset(self.config.data, self.paths.tfds)
    return self._opened.dataset

  @property
  def tokenizer(self):
    """The backbone's tokenizer (kind pretrained) or the BPE of DIR/data/tokenizer."""
    if self._opened.tokenizer is None:
      t = self.config.tokenizer
      self._opened.tokenizer = (
          tokenizer_lib.load_pretrained_tokenizer(t.path) if t.kind == "pretrained"
          else tokenizer_lib.load_saved_tokenizer(self.paths.tokenizer))
    return self._opened.tokenizer

  @property
  def knows_truth(self) -> bool:
    """Whether the dataset is the synthetic world, which knows each window's true next-item
    probabilities (`true_probs`)."""
    return self.config.data.name == "synthetic"

  def window_truth(self, split: str) -> np.ndarray:
    """Each item's true probability of being the next one [windows of `split`, num_items], given
    the user's latent state (`data.synthetic.world_truth`; the synthetic world only), by example
    index."""
    if not self.knows_truth:
      raise ValueError(f"config.data.name={self.config.data.name!r}: only the synthetic world "
                       "knows the true next-item probabilities")
    if self._opened.world_truth is None:
      d = self.config.data
      self._opened.world_truth = synthetic.world_truth(d.world, d.seed, d.min_history,
                                                       d.max_history)
    return self._opened.world_truth[split]

  def true_probs(self, split: str, examples) -> np.ndarray:
    """The true probability [N, C] of each candidate of `examples` (of `split`) being the next
    item (`window_truth`)."""
    truth = self.window_truth(split)
    return np.stack([truth[ex.index][list(ex.candidates)] for ex in examples]) if examples \
        else np.zeros((0, self.config.data.num_candidates), np.float32)

  def set_tokenizer(self, tok) -> None:
    """The data stage's freshly built tokenizer (encoded examples of another one are dropped)."""
    self._opened.tokenizer, self._opened.codec, self._opened.encoded = tok, None, {}

  @property
  def codec(self) -> Codec:
    """Prompts, titles and answers <-> ids: the tokenizer, with the catalogue's titles as tokens
    when config.tokenizer.title_tokens, or as slots after their text when
    config.tokenizer.item_slots (`data.codec`)."""
    t = self.config.tokenizer
    if self._opened.codec is None:
      self._opened.codec = Codec(self.tokenizer, self.dataset.titles
                                 if t.title_tokens or t.item_slots else None, t.item_slots)
    return self._opened.codec

  def _row_bounds(self, catalogue_max: int) -> tuple[int, int, int]:
    """(most rejected responses of a configured method, bound on a non-candidate rejected
    response (0: none), most new tokens decoded) for `data.lengths.longest_rows`;
    `catalogue_max`: the longest title response of the catalogue."""
    c = self.config
    runs = c.trained_runs
    k = max((c.num_rejected(r) for r in runs), default=0)
    semantic = "semantic" in c.negatives.strategies and any(
        c.method(r).pairs == "negatives" for r in runs)
    negatives = any(c.uses_negatives(r) for r in runs)
    bound = max(catalogue_max, c.negatives.max_new_tokens + 1) if semantic else 0
    return k, bound, max(c.eval.max_new_tokens, c.negatives.max_new_tokens if negatives else 0)

  def _row_lengths(self) -> dict[str, Any]:
    if not files.isfile(self.paths.row_lengths):
      raise FileNotFoundError(f"{self.paths.row_lengths} not found; run the data stage")
    return load_npz(self.paths.row_lengths)

  def longest_rows(self) -> dict[str, dict]:
    """The longest row of each kind this config's stages build (`data.lengths.longest_rows`),
    from the data stage's DIR/data/row_lengths.npz."""
    z = self._row_lengths()
    per_split = {split: {f: z[f"{split}/{f}"] for f in lengths_lib.FIELDS} for split in SPLITS}
    return lengths_lib.longest_rows(per_split, *self._row_bounds(int(z["catalogue_max"])))

  @property
  def max_seq_len(self) -> int:
    """config.data.max_seq_len, checked against the longest row any stage will build (a
    ConfigError naming the row when it is too short), or, when it is 0, that length rounded up
    to the batch buckets."""
    if not self._opened.max_seq_len:
      rows = self.longest_rows()
      kind = max(rows, key=lambda r: rows[r]["tokens"])
      needed, configured = rows[kind]["tokens"], self.config.data.max_seq_len
      if configured and configured < needed:
        k, _, new_tokens = self._row_bounds(0)  # the bound is not part of the message
        raise ConfigError(
            f"config.data.max_seq_len={configured} is too short: "
            f"{lengths_lib.describe(kind, k, new_tokens)} of {rows[kind]['split']} example "
            f"{rows[kind]['index']} has {needed} tokens (rows are never truncated); set "
            f"config.data.max_seq_len >= {needed}, or 0 to size it from the data")
      multiple = BatchShape().seq_multiple
      self._opened.max_seq_len = configured or -(-needed // multiple) * multiple
    return self._opened.max_seq_len

  @property
  def batch_shape(self) -> BatchShape:
    return BatchShape(max_seq_len=self.max_seq_len)

  def mesh(self):
    """The configured mesh, or None on a single device (then everything runs unsharded)."""
    if jax.device_count() == 1:
      return None
    m = self.config.mesh
    return sharding.make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)

  def example_pieces(self, split: str, ex, candidate_titles: Sequence[str] | None = None
                     ) -> list[prompts.Piece]:
    """The prompt of an example as pieces (`prompts.render_pieces`; template chosen per example
    when several); with `candidate_titles`, the same prompt showing those candidates instead of
    all of the example's."""
    templates = prompts.templates_for(self.config.prompt, self.dataset.name, self.title_format)
    template = prompts.choose_template(templates, self.config.data.seed, split, ex.index)
    return prompts.render_pieces(template, ex.history_titles,
                                 ex.candidate_titles if candidate_titles is None
                                 else candidate_titles, self.title_format)

  def example_prompt(self, split: str, ex) -> str:
    """The exact prompt text of an example (its pieces joined)."""
    return "".join(text for text, _ in self.example_pieces(split, ex))

  @property
  def title_format(self) -> str:
    """How prompts list titles: config.prompt.title_format, "auto" resolved on the catalogue."""
    if not self._opened.title_format:
      try:
        self._opened.title_format = prompts.resolve_title_format(
            self.config.prompt.title_format, self.dataset.titles,
            self.config.tokenizer.title_tokens)
      except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    return self._opened.title_format

  def sample(self, split: str, limit: int) -> tuple[list, list[tuple[tuple[int, ...],
                                                                       tuple[int, ...]]]]:
    """A seeded uniform draw of `limit` examples of `split` across its users (every example when
    `limit` is 0 or covers the split; `data.candidates.subset_indices`), in index order, and
    their (prompt ids, target response ids)."""
    size = self.dataset.size(split)
    indices = subset_indices(size, limit, self.config.data.seed, split)
    if len(indices) == size:
      return self.dataset.examples(split), self.encoded_examples(split)
    examples = self.dataset.examples_at(split, indices)
    return examples, self._encode(split, examples)

  def held_out_users(self) -> set[int]:
    """The training users SFT never sees when config.preference.prompts="held_out" (a seeded
    draw of config.preference.held_out_share of them); empty otherwise."""
    p = self.config.preference
    if p.prompts != "held_out":
      return set()
    return candidates_lib.held_out_users([ex.user for ex in self.dataset.examples("train")],
                                         p.held_out_share, self.config.data.seed)

  def preference_sample(self, limit: int) -> tuple[list, list[tuple[tuple[int, ...],
                                                                    tuple[int, ...]]]]:
    """The negatives' and preference prompts: `sample("train", limit)`, or with
    config.preference.prompts="held_out" a seeded draw of `limit` examples of the held-out
    users (every one when `limit` is 0), in index order, and their (prompt, target) ids."""
    held_out = self.held_out_users()
    if not held_out:
      return self.sample("train", limit)
    pool = np.array([ex.index for ex in self.dataset.examples("train") if ex.user in held_out])
    picked = pool[subset_indices(len(pool), limit, self.config.data.seed, "train")]
    examples = self.dataset.examples_at("train", picked)
    return examples, self._encode("train", examples)

  def _encode(self, split: str, examples) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(prompt ids, target response ids) of `examples` of `split`."""
    codec = self.codec
    prompt_ids = codec.encode_prompts([self.example_pieces(split, ex) for ex in examples])
    return [(p, codec.encode_response(ex.target_title)) for p, ex in zip(prompt_ids, examples)]

  def encoded_examples(self, split: str, limit: int = 0
                       ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(prompt ids, target response ids) of every example of `split` (the first `limit` if > 0).

    A prefix is encoded once and extended when a later call asks for more.
    """
    examples = self.dataset.examples(split, limit)
    encoded = self._opened.encoded.get(split, [])
    if len(encoded) < len(examples):
      encoded = encoded + self._encode(split, examples[len(encoded):])
      self._opened.encoded[split] = encoded
    return encoded[:len(examples)]
