"""The data stage end to end: TFDS datasets, tokenizer, stats.json, the launcher."""

import collections
import json
import os
import shutil
import subprocess
import sys

from conftest import REPO, context
import numpy as np
import pytest

from rosepo_jax import pipeline, scoring
from rosepo_jax.config import ConfigError
from rosepo_jax.data import batching
from rosepo_jax.data import codec as codec_lib
from rosepo_jax.data import dataset as dataset_lib
from rosepo_jax.stages import data as data_stage
from rosepo_jax.stages import sft
from test_data_records import SHARED, needs_shared


def _config(path, **data):
  namespace = {}
  exec(open(os.path.join(REPO, "configs", path)).read(), namespace)  # pylint: disable=exec-used
  config = namespace["get_config"]()
  config.data.update(data)
  return config


def _demo(seed=0, users=200):
  config = _config("synthetic_scratch.py", seed=seed)
  config.data.world.num_users = users
  config.tokenizer.vocab_size = 400
  return config


def test_synthetic_is_deterministic_by_seed(tmp_path):
  a = context(_demo(), str(tmp_path / "a")).dataset.examples("test")
  b = context(_demo(), str(tmp_path / "b")).dataset.examples("test")
  c = context(_demo(seed=1), str(tmp_path / "c")).dataset.examples("test")
  assert a == b and a != c
  for ex in a:
    assert ex.candidates.count(ex.target) == 1 and len(set(ex.candidates)) == 20
    assert not set(ex.history) & set(ex.candidates)


def test_synthetic_world_has_learnable_signal(tmp_path):
  """A two-line heuristic (the history's majority genre word, then the most popular such
  candidate) must beat random (1/20) by far: the signal a model can learn is really there."""
  ds = context(_demo(users=600), str(tmp_path)).dataset
  genre = lambda title: title.split()[-1]  # "<Name> <Genre>"  # pylint: disable=unnecessary-lambda-assignment
  hits = []
  for ex in ds.examples("test"):
    top = collections.Counter(genre(t) for t in ex.history_titles[-3:]).most_common(1)[0][0]
    same = [c for c in ex.candidates if genre(ds.titles[c]) == top] or list(ex.candidates)
    hits.append(max(same, key=lambda c: ds.train_popularity[c]) == ex.target)
  assert np.mean(hits) > 0.25, np.mean(hits)
  shares = np.sort(ds.train_popularity)[::-1] / ds.train_popularity.sum()
  assert shares[:len(shares) // 5].sum() > 0.5  # planted popularity bias: top 20% > half


def test_data_stage_writes_stats_and_tokenizer(tmp_path):
  stats = data_stage.run(context(_demo(), str(tmp_path)))
  on_disk = json.load(open(tmp_path / "data" / "stats.json"))
  assert on_disk == json.loads(json.dumps(stats))
  for split in ("train", "val", "test"):
    s = stats["splits"][split]
    assert {"examples", "users", "items", "mean_history_len", "prompt_tokens"} <= set(s)
    assert s["prompt_tokens"]["p50"] <= s["prompt_tokens"]["p95"] <= s["prompt_tokens"]["max"]
  assert stats["catalogue_size"] == 240 and stats["duplicate_titles_resolved"] == 0
  from transformers import AutoTokenizer, PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  tok = AutoTokenizer.from_pretrained(tmp_path / "data" / "tokenizer")
  assert isinstance(tok, PreTrainedTokenizerFast) and tok.eos_token == "<eos>"
  text = " Blue Jazz Garden"
  assert tok.decode(tok(text)["input_ids"]) == text


def test_prefix_reads_equal_full_reads(tmp_path):
  """examples/encoded_examples with a limit read only a prefix, and extend it on a later call."""
  config = _demo()
  data_stage.run(context(config, tmp_path))
  ctx = context(config, tmp_path)
  ds = ctx.dataset
  first = ds.examples("train", 7)
  assert len(first) == 7 and len(ds._cache["train"]) == 7  # pylint: disable=protected-access
  head = ctx.encoded_examples("train", 5)
  more = ctx.encoded_examples("train", 30)
  full_ctx = context(config, tmp_path)
  full_ds = full_ctx.dataset
  full = full_ctx.encoded_examples("train")
  assert ds.examples("train") == full_ds.examples("train") and first == full_ds.examples("train")[:7]
  assert head == full[:5] and more == full[:30] and len(full) == len(ds.examples("train"))
  assert ctx.encoded_examples("train") == full
  assert ds.examples("val", 10 ** 9) == full_ds.examples("val")


def test_prompt_templates_sampled_per_example(tmp_path):
  config = _demo()
  config.prompt.templates = ["A {history} B {candidates} Answer:", "C {history} D {candidates} Answer:"]
  ctx = context(config, tmp_path)
  texts = [ctx.example_prompt("train", ex) for ex in ctx.dataset.examples("train")[:40]]
  assert {t[0] for t in texts} == {"A", "C"}
  assert texts == [ctx.example_prompt("train", ex) for ex in ctx.dataset.examples("train")[:40]]
  config.prompt.templates = ["no placeholders Answer:"]  # found when the config is parsed
  with pytest.raises(ConfigError, match=r"config.prompt.templates\[0\]=.*expected \{history\} "
                     "once, found it 0 times"):
    context(config, tmp_path)


def test_launcher_data_stage_and_missing_files_error(tmp_path):
  env = dict(os.environ, XLA_FLAGS="")
  ok = subprocess.run([sys.executable, "-m", "launch.main", "--config=configs/demo.py",
                       "--config.data.world.num_users=100", "--config.tokenizer.vocab_size=300",
                       f"--workdir={tmp_path / 'w'}", "--stages=data"], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=600)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert json.load(open(tmp_path / "w" / "data" / "stats.json"))["dataset"] == "synthetic"
  bad = subprocess.run([sys.executable, "-m", "launch.main", "--config=configs/lastfm.py",
                        f"--config.data.manual_dir={tmp_path}", f"--workdir={tmp_path / 'x'}",
                        "--stages=data"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  assert bad.returncode != 0
  assert "missing file(s) ['id2name.txt', 'jsonl/train_data.jsonl'" in bad.stderr
  assert str(tmp_path) in bad.stderr


@needs_shared
def test_lastfm_data_stage_matches_sdpo(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lastfm"))
  stats = data_stage.run(context(_config("lastfm.py"), workdir))
  assert [stats["splits"][s]["examples"] for s in ("train", "val", "test")] == [47872, 2767, 2495]
  assert stats["catalogue_size"] == 4606
  assert stats["tokenizer"]["kind"] == "bpe" and stats["splits"]["test"]["prompt_tokens"]["max"] > 0
  ds = context(_config("lastfm.py"), workdir).dataset
  for split in ("val", "test"):
    records = json.load(open(os.path.join(SHARED, "sdpo_lastfm", f"lastfm-{split}.json")))
    examples = ds.examples(split)
    assert len(examples) == len(records)
    for ex, rec in zip(examples, records):
      assert list(ex.history_titles) == rec["historyList"].split("::")
      assert list(ex.candidate_titles) == rec["itemList"]
      assert ex.target_title == rec["trueSelection"]
    # LLaRA's one-row-per-user subset survives the TFDS round trip.
    assert len(ds.eval_subsets[split]["llara_last"]) == 122
  train = ds.examples("train")
  assert all(ex.candidates.count(ex.target) == 1 for ex in train[:2000])


@needs_shared
def test_movielens_tfds_matches_llara_rows(tmp_path):
  ds = context(_config("movielens.py"), str(tmp_path)).dataset
  assert ds.num_items == 1682
  folder = os.path.join(SHARED, "llara_movielens", "jsonl")
  for split in ("val", "test"):
    rows = [json.loads(l) for l in open(os.path.join(folder, f"{split.capitalize()}_data.jsonl"))]
    got = [(list(e.history), e.target) for e in ds.examples(split)]
    assert got == [([p[0] for p in r["seq"][:r["len_seq"]]], r["next"][0]) for r in rows]


TITLES = ("Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta", "Iota", "Kappa")


def _generic_folder(folder, titles=TITLES):
  """A small generic dataset: 10 items, users with 4-item histories."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "id2name.txt"), "w") as f:
    f.writelines(f"{i}::{t}\n" for i, t in enumerate(titles))
  rows = [{"seq": [(u + k) % 10 for k in range(4)], "next": (u + 4) % 10, "user": u}
          for u in range(12)]
  for split, part in (("train", rows[:8]), ("val", rows[8:10]), ("test", rows[10:])):
    with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in part)


def test_edited_inputs_and_missing_outputs_rerun_the_data_stage(tmp_path):
  raw = str(tmp_path / "raw")
  _generic_folder(raw)
  config = _demo()
  config.data.update(name="generic", manual_dir=raw, num_candidates=3)
  workdir = str(tmp_path / "w")
  assert pipeline.run(config, workdir, ["data"]) == {"data": "ran"}
  assert pipeline.run(config, workdir, ["data"]) == {"data": "up to date"}
  _generic_folder(raw, titles=TITLES[:5] + ("Omega",) + TITLES[6:])
  assert pipeline.run(config, workdir, ["data"]) == {"data": "ran"}  # an edited title
  assert context(config, workdir).dataset.titles[5] == "Omega"
  with open(os.path.join(raw, "train.jsonl")) as f:
    kept = f.readlines()[:5]
  with open(os.path.join(raw, "train.jsonl"), "w") as f:
    f.writelines(kept)  # a cut training file
  assert pipeline.run(config, workdir, ["data"]) == {"data": "ran"}
  assert json.load(open(os.path.join(workdir, "data", "stats.json")))["splits"]["train"][
      "examples"] == 5
  shutil.rmtree(os.path.join(workdir, "data", "tfds"))  # a missing output
  assert pipeline.run(config, workdir, ["data"]) == {"data": "ran"}
  assert pipeline.run(config, workdir, ["data"]) == {"data": "up to date"}


def test_the_same_config_from_another_checkout_keeps_the_run(tmp_path, monkeypatch):
  """Relative data paths resolve against the checkout; from another checkout holding a copy of
  the same raw files the data unit (and so the whole run) stays up to date, and the TFDS folder
  is the same."""
  for checkout in ("a", "b"):
    _generic_folder(str(tmp_path / checkout / "raw"))
  config = _demo()
  config.data.update(name="generic", manual_dir="raw", num_candidates=3)
  workdir = str(tmp_path / "w")
  monkeypatch.setattr(dataset_lib, "REPO_ROOT", str(tmp_path / "a"))
  assert pipeline.run(config, workdir, ["data"]) == {"data": "ran"}
  built = sorted(os.listdir(os.path.join(workdir, "data", "tfds", "rosepo_generic")))
  monkeypatch.setattr(dataset_lib, "REPO_ROOT", str(tmp_path / "b"))
  assert pipeline.run(config, workdir, ["data"]) == {"data": "up to date"}
  _generic_folder(str(tmp_path / "b" / "raw"), titles=TITLES[:5] + ("Omega",) + TITLES[6:])
  assert pipeline.run(config, workdir, ["data"]) == {"data": "ran"}  # its content differs
  assert sorted(os.listdir(os.path.join(workdir, "data", "tfds", "rosepo_generic"))) == built


def test_an_interrupted_build_leaves_no_incomplete_folder(tmp_path):
  config = _demo(users=60)
  ctx = context(config, tmp_path)
  ctx.dataset  # pylint: disable=pointless-statement  (builds it)
  versions = [os.path.join(r, d) for r, dirs, _ in os.walk(ctx.paths.tfds) for d in dirs
              if d == "1.0.0"]
  assert len(versions) == 1
  stale = os.path.join(os.path.dirname(versions[0]), "incomplete.ABC123_1.0.0")
  os.makedirs(stale)  # what a killed build leaves
  context(config, tmp_path).dataset  # pylint: disable=expression-not-assigned
  assert not os.path.exists(stale)


# ------------------------------------------------------------------------------------------------
# Lengths known before any training; prompts that list titles unambiguously; dropped rows counted.


def test_a_short_max_seq_len_stops_before_sft(tmp_path):
  """A max_seq_len shorter than the candidate-scoring rows (prompt + all 20 titles) stops the
  job in the data stage, naming the key, the row and the length needed; SFT never starts."""
  config = _demo(users=60)
  config.methods = ("sft", "dpo")  # one rejected title: the scoring rows are the longest
  config.data.max_seq_len = 64
  workdir = str(tmp_path / "w")
  with pytest.raises(ConfigError, match=r"config\.data\.max_seq_len=64 is too short: a "
                     r"candidate-scoring row .* of (train|val|test) example \d+ has (\d+) tokens"
                     ) as e:
    pipeline.run(config, workdir, ["data", "sft"])
  assert not os.path.exists(os.path.join(workdir, "sft"))
  needed = int(str(e.value).split(">= ")[1].split(",")[0])
  config.data.max_seq_len = needed
  assert pipeline.run(config, workdir, ["data"]) == {"data": "ran"}


def test_max_seq_len_zero_is_sized_from_the_longest_row(tmp_path):
  """With max_seq_len 0 the longest row is found from the data stage's lengths; each kind equals
  the longest row the stages really build (counted here from the encoded rows)."""
  config = _demo(users=60)
  config.methods = ("sft", "dpo", "sdpo")
  config.preference.sdpo_k = 3
  data_stage.run(context(config, tmp_path))
  ctx = context(config, tmp_path)
  rows = ctx.longest_rows()
  ds, codec = ctx.dataset, ctx.codec
  expect = {"sft": 0, "scoring": 0, "decoding": 0, "preference": 0}
  for split in ("train", "val", "test"):
    examples = ds.examples(split)
    for ex, (prompt, target) in zip(examples, ctx.encoded_examples(split)):
      titles = [codec.encode_response(ds.titles[c]) for c in ex.candidates]
      others = sorted((len(t) for c, t in zip(ex.candidates, titles) if c != ex.target))
      expect["sft"] = max(expect["sft"], len(prompt) + len(target))
      expect["scoring"] = max(expect["scoring"], len(prompt) + sum(map(len, titles)))
      expect["decoding"] = max(expect["decoding"], len(prompt) + config.eval.max_new_tokens)
      expect["preference"] = max(expect["preference"], len(prompt) + len(target) + 3 * others[-1])
  assert {k: v["tokens"] for k, v in rows.items()} == expect
  assert ctx.max_seq_len == -(-max(expect.values()) // 32) * 32
  assert ctx.batch_shape.max_seq_len == ctx.max_seq_len


def test_titles_with_commas_are_listed_one_per_line(tmp_path):
  """"auto" lists titles with ", " when no title contains it, else one "- title" line each."""
  raw = str(tmp_path / "raw")
  _generic_folder(raw, titles=TITLES[:3] + ("Crooked Kingdom (Six of Crows, #2)",) + TITLES[4:])
  config = _demo()
  config.data.update(name="generic", manual_dir=raw, num_candidates=3, min_history=1)
  stats = data_stage.run(context(config, tmp_path / "w"))
  assert stats["title_format"] == "lines"
  ctx = context(config, tmp_path / "w")
  ex = ctx.dataset.examples("train")[0]
  prompt = ctx.example_prompt("train", ex)
  assert "\n".join("- " + t for t in ex.candidate_titles) in prompt
  listed = prompt.split("Candidates:\n")[1].split("\nWhich")[0].split("\n")
  assert [line[2:] for line in listed] == list(ex.candidate_titles)
  _generic_folder(raw)
  assert data_stage.run(context(config, tmp_path / "v"))["title_format"] == "comma"
  config.prompt.title_format = "comma"
  assert context(config, tmp_path / "w").title_format == "comma"  # asked for explicitly


def test_dropped_rows_are_counted_per_split_and_reason(tmp_path):
  raw = str(tmp_path / "raw")
  _generic_folder(raw)
  with open(os.path.join(raw, "train.jsonl"), "a") as f:
    f.write(json.dumps({"seq": [1], "next": 2}) + "\n")  # 1 history item < min_history=3
  config = _demo()
  config.data.update(name="generic", manual_dir=raw, num_candidates=3)
  stats = data_stage.run(context(config, tmp_path / "w"))
  assert stats["splits"]["train"]["dropped_rows"] == {"history shorter than min_history=3": 1}
  assert stats["splits"]["train"]["examples"] == 8
  assert stats["splits"]["test"]["dropped_rows"] == {}


def test_a_tokenizer_that_adds_bos_starts_every_prompt_with_it(tmp_path):
  """A backbone tokenizer that adds BOS (Llama-2/3 style): SFT rows (curriculum ones too),
  candidate-scoring rows and decoding prompts start with it, followed by the same ids as without
  it. Our BPE adds none and is unchanged."""
  from tokenizers import processors  # pylint: disable=g-import-not-at-top
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  config = _demo(users=60)
  plain = context(config, tmp_path / "plain")
  data_stage.run(plain)
  assert codec_lib.bos_prefix(plain.tokenizer) == ()
  tok = AutoTokenizer.from_pretrained(str(tmp_path / "plain" / "data" / "tokenizer"))
  tok.add_special_tokens({"bos_token": "<s>"})
  bos = tok.bos_token_id
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", bos)])
  tok.save_pretrained(str(tmp_path / "bos_tok"))
  config.tokenizer.update(kind="pretrained", path=str(tmp_path / "bos_tok"))
  config.sft.candidate_curriculum = ((10, 5),)
  ctx = context(config, tmp_path / "bos")
  data_stage.run(ctx)
  assert codec_lib.bos_prefix(ctx.tokenizer) == (bos,)
  with_bos, without = ctx.encoded_examples("test"), plain.encoded_examples("test")
  assert [p for p, _ in with_bos] == [(bos,) + p for p, _ in without]  # decoding prompts
  assert [r for _, r in with_bos] == [r for _, r in without] and bos not in with_bos[0][1]
  rows = scoring.candidate_rows(ctx.codec, [p for p, _ in with_bos],
                                [ex.candidates for ex in ctx.dataset.examples("test")],
                                ctx.dataset.titles)
  assert all(r.prompt[0] == bos and r.prompt.count(bos) == 1 for r in rows)  # scoring rows
  sft_rows = sft.training_rows(ctx, "train") + sft.curriculum_phases(ctx)[0][1]
  assert all(r.prompt[0] == bos and r.prompt.count(bos) == 1 for r in sft_rows)
  batch = batching.make_batch(sft_rows[:4], ctx.batch_shape, 1)
  assert (batch["tokens"][:, 0] == bos).all()
