"""The file layer (`rosepo_jax.files`) and the writers built on it, each test on a local folder and
on a gs:// bucket (`fake_gcs`: epath's fsspec backend over a local folder)."""

import json
import os

import fake_gcs
import numpy as np
import pytest

from rosepo_jax import files, workdir
from rosepo_jax.checkpoints import atomic
from rosepo_jax.data import tokenizer as tokenizer_lib


@pytest.fixture(params=["local", "gs"])
def base(request, tmp_path, monkeypatch):
  """A folder that does not exist yet: tmp_path/w, or gs://bucket/w kept in tmp_path/bucket."""
  monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would show up here as gs:/
  if request.param == "local":
    return str(tmp_path / "w")
  fake_gcs.install(monkeypatch, str(tmp_path / "store"))
  return "gs://bucket/w"


def _no_stray_local_folder(tmp_path):
  assert not os.path.exists(tmp_path / "gs:"), "a gs:// path was used as a local path"


def test_write_read_append_list_remove(base, tmp_path):
  path = files.join(base, "a", "b.json")
  files.write_text(path, '{"x": 1}')
  assert files.read_text(path) == '{"x": 1}'
  assert files.isfile(path) and not files.isdir(path)
  assert files.isdir(files.join(base, "a")) and not files.isfile(files.join(base, "a"))
  assert files.listdir(files.join(base, "a")) == ["b.json"]  # no temp file left beside it
  files.write_text(path, "second")
  assert files.read_text(path) == "second"
  log = files.join(base, "m.jsonl")
  files.append_text(log, "1\n")
  files.append_text(log, "2\n")
  assert files.read_text(log) == "1\n2\n"
  files.remove(files.join(base, "a"))
  files.remove(files.join(base, "never"))  # nothing to remove: no error
  assert files.listdir(base) == ["m.jsonl"]
  assert not files.exists(path)
  with pytest.raises(FileNotFoundError):
    files.read_text(path)
  _no_stray_local_folder(tmp_path)


def test_local_output_publishes_on_success_only(base, tmp_path):
  target = files.join(base, "tok")
  with files.local_output(target) as local:
    assert not files.is_remote(local)
    os.makedirs(local)
    with open(os.path.join(local, "t.json"), "w", encoding="utf-8") as f:
      f.write("v1")
  assert files.listdir(target) == ["t.json"]
  with pytest.raises(RuntimeError, match="writer failed"):
    with files.local_output(target) as local:
      os.makedirs(local)
      with open(os.path.join(local, "t.json"), "w", encoding="utf-8") as f:
        f.write("half")
      raise RuntimeError("writer failed")
  assert files.read_text(files.join(target, "t.json")) == "v1"  # untouched
  with files.local_output(target) as local:  # a new folder replaces the old one whole
    os.makedirs(local)
    with open(os.path.join(local, "u.json"), "w", encoding="utf-8") as f:
      f.write("v2")
  assert files.listdir(target) == ["u.json"]
  assert sorted(files.listdir(base)) == ["tok"]  # no staging left in the destination
  _no_stray_local_folder(tmp_path)


def test_copies_between_local_and_base(base, tmp_path):
  src = tmp_path / "src"
  (src / "sub").mkdir(parents=True)
  (src / "a.bin").write_bytes(b"\x00\x01")
  (src / "sub" / "b.txt").write_text("b")
  files.copy(str(src), files.join(base, "tree"))
  assert files.listdir(files.join(base, "tree")) == ["a.bin", "sub"]
  with files.local_copy(files.join(base, "tree")) as local:
    assert open(os.path.join(local, "sub", "b.txt"), encoding="utf-8").read() == "b"
    kept = local
  assert os.path.exists(kept) == (not files.is_remote(base))  # a remote path's copy is gone
  mirror = files.local_mirror(files.join(base, "tree"))
  assert sorted(os.listdir(mirror)) == ["a.bin", "sub"]
  files.write_text(files.join(base, "tree", "c.txt"), "c")
  assert "c.txt" in os.listdir(files.local_mirror(files.join(base, "tree")))  # copied afresh
  files.rename(files.join(base, "tree"), files.join(base, "moved"))
  assert files.listdir(base) == ["moved"]
  assert files.read_bytes(files.join(base, "moved", "a.bin")) == b"\x00\x01"
  _no_stray_local_folder(tmp_path)


def test_atomic_dir_replaces_only_its_own_outputs(base, tmp_path):
  dst = files.join(base, "model")
  with atomic.atomic_dir(dst) as tmp:
    files.write_text(files.join(tmp, "w.json"), "1")
  assert sorted(files.listdir(dst)) == [atomic.MARKER, "w.json"]
  with pytest.raises(ValueError, match="boom"):
    with atomic.atomic_dir(dst) as tmp:
      files.write_text(files.join(tmp, "w.json"), "2")
      raise ValueError("boom")
  assert files.read_text(files.join(dst, "w.json")) == "1"  # the failed write changed nothing
  with atomic.atomic_dir(dst) as tmp:
    files.write_text(files.join(tmp, "v.json"), "3")
  assert sorted(files.listdir(dst)) == [atomic.MARKER, "v.json"]
  assert files.listdir(base) == ["model"]  # no temp or old folder left beside it
  foreign = files.join(base, "theirs")
  files.write_text(files.join(foreign, "keep.txt"), "keep")
  with pytest.raises(atomic.DestinationError, match="no .rosepo_jax_output marker"):
    with atomic.atomic_dir(foreign):
      pass
  with pytest.raises(atomic.DestinationError, match="it is a file"):
    with atomic.atomic_dir(files.join(foreign, "keep.txt")):
      pass
  assert files.read_text(files.join(foreign, "keep.txt")) == "keep"
  _no_stray_local_folder(tmp_path)


def test_workdir_writers_round_trip(base, tmp_path):
  rows = [{"i": i, "text": f"row {i} é"} for i in range(5)]
  workdir.write_records(files.join(base, "p", "pairs.array_record"), rows)
  assert workdir.read_records(files.join(base, "p", "pairs.array_record")) == rows
  workdir.write_jsonl(files.join(base, "e.jsonl"), rows)
  assert workdir.read_jsonl(files.join(base, "e.jsonl")) == rows
  workdir.write_json(files.join(base, "s.json"), {"a": [1, 2]})
  assert workdir.read_json(files.join(base, "s.json")) == {"a": [1, 2]}
  with pytest.raises(FileNotFoundError, match="x.json not found; run it"):
    workdir.read_json(files.join(base, "x.json"), "run it")
  arrays = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": np.float32([0.5])}
  workdir.save_npz(files.join(base, "r.npz"), **arrays)
  loaded = workdir.load_npz(files.join(base, "r.npz"))
  assert sorted(loaded) == ["a", "b"]
  for k, v in arrays.items():
    np.testing.assert_array_equal(loaded[k], v)
    assert loaded[k].dtype == v.dtype
  tok = tokenizer_lib.train_bpe(["one two three four", "two three"] * 20, 300)
  tokenizer_lib.save_tokenizer(tok, files.join(base, "tokenizer"))
  back = tokenizer_lib.load_saved_tokenizer(files.join(base, "tokenizer"))
  assert back("two three four")["input_ids"] == tok("two three four")["input_ids"]
  assert json.loads(files.read_text(files.join(base, "tokenizer", "tokenizer.json")))
  tree = files.tree(base)  # every file, by its path relative to the folder
  assert {"e.jsonl", "p/pairs.array_record", "r.npz", "s.json", "tokenizer/tokenizer.json"} <= set(
      tree) and tree == sorted(tree) and not any(t.endswith("/") for t in tree)
  assert files.relative(files.join(base, "p", "pairs.array_record"), base) == "p/pairs.array_record"
  with pytest.raises(ValueError, match="is not inside"):
    files.relative(files.join(tmp_path, "elsewhere"), files.join(base, "p"))
  for path in (files.join(base, "p"), files.join(base, "tokenizer")):
    files.remove(path)
  assert sorted(files.listdir(base)) == ["e.jsonl", "r.npz", "s.json"]
  assert files.tree(files.join(base, "missing")) == []
  _no_stray_local_folder(tmp_path)
