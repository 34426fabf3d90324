"""Raw readers: the real datasets' published counts, and a clear error for each malformed input."""

import json
import os

from conftest import REPO
import numpy as np
import pytest

from rosepo_jax import metrics
from rosepo_jax.data import records as R

SHARED = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED),
                                  reason=f"real data not found at {SHARED} (../shared/data)")


@needs_shared
def test_lastfm_counts_and_sdpo_candidates():
  raw = R.read_lastfm(os.path.join(SHARED, "llara_lastfm"),
                      candidates_dir=os.path.join(SHARED, "sdpo_lastfm"))
  assert {k: len(v) for k, v in raw.splits.items()} == {"train": 47872, "val": 2767, "test": 2495}
  assert raw.num_items == 4606 and raw.duplicate_titles == 0
  assert [len({w.user for w in raw.splits[s]}) for s in R.SPLITS] == [976, 122, 122]
  assert raw.train_popularity.sum() == 50800  # every training row's target is one interaction
  assert all(3 <= len(w.history) <= 10 for s in R.SPLITS for w in raw.splits[s])
  assert len(raw.frozen_candidates["test"]) == 2495
  for split, name in (("val", "Val"), ("test", "Test")):  # LLaRA's one-row-per-user subsets
    rows = [json.loads(line) for line in
            open(os.path.join(SHARED, "llara_lastfm", "jsonl", f"{name}_data_last.jsonl"))]
    indices = raw.eval_subsets[split][R.LLARA_LAST_SUBSET]
    assert len(indices) == len(rows) == 122 and len(set(indices)) == 122
    assert [(list(raw.splits[split][k].history), raw.splits[split][k].target) for k in indices] \
        == [(r["seq"][:r["len_seq"]], r["next"]) for r in rows]


@needs_shared
def test_movielens_counts_and_llara_rows():
  folder = os.path.join(SHARED, "llara_movielens")
  raw = R.read_movielens(os.path.join(SHARED, "movielens_100k"),
                         split_file=os.path.join(folder, "split_users.json"),
                         eval_rows_dir=os.path.join(folder, "jsonl"))
  assert raw.info == {"ratings": 100000, "users_total": 943,
                      "dropped_rows": {"train": {}, "val": {}, "test": {}}}
  assert raw.num_items == 1682 and len(set(t.casefold() for t in raw.titles)) == 1682
  assert raw.duplicate_titles > 0  # year-less titles collide; counted, never merged
  split = json.load(open(os.path.join(folder, "split_users.json")))
  for name in ("val", "test"):
    rows = [json.loads(l) for l in open(os.path.join(folder, "jsonl", f"{name.capitalize()}_data.jsonl"))]
    want = [([p[0] for p in r["seq"][:r["len_seq"]]], r["next"][0]) for r in rows]
    got = [(list(w.history), w.target) for w in raw.splits[name]]
    assert got == want
    assert [w.user for w in raw.splits[name]] == split[f"{name}_users"]
  train_users = {w.user for w in raw.splits["train"]}
  assert len(train_users) == 943 - 94 - 95
  assert not train_users & (set(split["val_users"]) | set(split["test_users"]))


def test_movielens_title_form():
  assert R.movielens_title("Hudsucker Proxy, The (1994)") == ("The Hudsucker Proxy", "1994")
  assert R.movielens_title("Get Shorty (1995)") == ("Get Shorty", "1995")
  assert R.movielens_title("unknown") == ("unknown", None)


def test_unique_titles_by_year_then_id():
  titles, changed = R.unique_titles(["A", "B", "a", "C", "C"], ["1990", None, "1991", "2000", "2000"])
  assert titles == ["A (1990)", "B", "a (1991)", "C (2000) [#3]", "C (2000) [#4]"]
  assert changed == 4


# ------------------------------------------------------------------------------------------------
# Malformed input: each error names the file, the line and the field.


def _generic(tmp_path, train=None, id2name=None, meta=None):
  (tmp_path / "id2name.txt").write_text(id2name or "0::Alpha\n1::Beta\n2::Gamma\n3::Delta\n")
  rows = train or ['{"seq": [0, 1, 2], "next": 3}']
  (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
  for split in ("val", "test"):
    (tmp_path / f"{split}.jsonl").write_text('{"seq": [3, 2, 1], "next": 0}\n')
  if meta is not None:
    (tmp_path / "meta.json").write_text(json.dumps(meta))
  return str(tmp_path)


def test_generic_reads_and_drops_padding(tmp_path):
  raw = R.read_generic(_generic(tmp_path, train=['{"seq": [9, 0, 1, 2], "next": 3, "user": 7}'],
                                meta={"padding_id": 9}))
  assert raw.splits["train"] == [R.Window(7, (0, 1, 2), 3)]


def test_missing_files_are_listed(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing file\(s\) \['train.jsonl', 'val.jsonl', "
                     r"'test.jsonl', 'id2name.txt'\]"):
    R.read_generic(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="u.data"):
    R.read_movielens(str(tmp_path))


@pytest.mark.parametrize("row,match", [
    ('{"seq": [0, 1, 2], "next": 3', r"train.jsonl:2: not valid JSON"),
    ('{"next": 3}', r"train.jsonl:2: field 'seq' is missing"),
    ('{"seq": [0, 1, 2], "next": "x"}', r"train.jsonl:2: field 'next' must be int"),
    ('{"seq": [0, 1, 17], "next": 3}', r"train.jsonl:2: field 'seq' has item ids \[17\] outside"),
    ('{"seq": [0, 1, 2], "next": -1}', r"train.jsonl:2: field 'next' has item ids \[-1\]"),
    ('[1, 2]', r"train.jsonl:2: expected a JSON object"),
])
def test_malformed_rows_name_file_line_field(tmp_path, row, match):
  with pytest.raises(R.DataError, match=match):
    R.read_generic(_generic(tmp_path, train=['{"seq": [0, 1, 2], "next": 3}', row]))


@pytest.mark.parametrize("id2name,match", [
    ("0::A\n1 B\n", r"id2name.txt:2: expected 'id::title'"),
    ("0::A\n0::B\n", r"id2name.txt:2: item id 0 appears twice"),
    ("0::A\n2::B\n", r"ids must be 0..1 without gaps \(one per line\); missing \[1\], max id 2"),
    ("0::A\n1::  \n", r"id2name.txt:2: the title of item 1 has no visible character"),
])
def test_malformed_id2name(tmp_path, id2name, match):
  with pytest.raises(R.DataError, match=match):
    R.read_generic(_generic(tmp_path, id2name=id2name))


def test_duplicate_titles_are_disambiguated_not_merged(tmp_path):
  raw = R.read_generic(_generic(tmp_path, id2name="0::Alpha\n1::Beta\n2::alpha\n3::Delta\n"))
  assert raw.titles == ["Alpha [#0]", "Beta", "alpha [#2]", "Delta"] and raw.duplicate_titles == 2


def _movielens(tmp_path, data, items="1|A (1990)|x\n2|B (1991)|x\n3|C (1992)|x\n4|D (1993)|x\n"):
  (tmp_path / "u.item").write_bytes(items.encode("iso-8859-1"))
  (tmp_path / "u.data").write_text(data)
  return str(tmp_path)


@pytest.mark.parametrize("data,match", [
    ("1\t1\t5\t10\n1\t2\n", r"u.data:2: expected 'user<TAB>item<TAB>rating<TAB>time'"),
    ("1\t9\t5\t10\n", r"u.data:1: field item=9 is not a movie id in u.item \(1..4\)"),
    ("1\t1\t7\t10\n", r"u.data:1: field rating=7 is outside 1..5"),
])
def test_malformed_movielens(tmp_path, data, match):
  with pytest.raises(R.DataError, match=match):
    R.read_movielens(_movielens(tmp_path, data))


def test_movielens_reads_iso_8859_1_titles(tmp_path):
  data = "".join(f"{u}\t{i}\t4\t{t}\n" for u in range(1, 11) for t, i in enumerate([1, 2, 3, 4]))
  raw = R.read_movielens(_movielens(tmp_path, data, items="1|Café (1990)|x\n2|B (1991)|x\n"
                                    "3|C (1992)|x\n4|D (1993)|x\n"))
  assert raw.titles[0] == "Café"
  assert raw.info == {"ratings": 40, "users_total": 10,
                      "dropped_rows": {"train": {}, "val": {}, "test": {}}}
  assert np.array_equal(raw.train_popularity, [8, 8, 8, 8])  # 8 training users


def test_llara_rows_reject_ids_after_padding(tmp_path):
  (tmp_path / "jsonl").mkdir()
  (tmp_path / "id2name.txt").write_text("".join(f"{i}::T{i}\n" for i in range(5)))
  good = '{"seq": [0, 1, 2, 5], "len_seq": 3, "next": 3}'
  (tmp_path / "jsonl" / "train_data.jsonl").write_text(good + "\n" +
                                                       '{"seq": [0, 5, 2, 5], "len_seq": 1, "next": 3}\n')
  for f in ("Val_data.jsonl", "Test_data.jsonl"):
    (tmp_path / "jsonl" / f).write_text(good + "\n")
  with pytest.raises(R.DataError, match=r"train_data.jsonl:2: field 'seq' has item ids after "
                     r"position len_seq=1"):
    R.read_lastfm(str(tmp_path))


def test_llara_last_row_without_its_example_is_named(tmp_path):
  (tmp_path / "jsonl").mkdir()
  (tmp_path / "id2name.txt").write_text("".join(f"{i}::T{i}\n" for i in range(30)))
  row = '{"seq": [0, 1, 2, 30], "len_seq": 3, "next": 3}'
  for f in ("train_data.jsonl", "Val_data.jsonl", "Test_data.jsonl", "Val_data_last.jsonl"):
    (tmp_path / "jsonl" / f).write_text(row + "\n")
  assert R.read_lastfm(str(tmp_path)).eval_subsets == {"val": {R.LLARA_LAST_SUBSET: [0]}}
  (tmp_path / "jsonl" / "Test_data_last.jsonl").write_text(
      row + "\n" + '{"seq": [0, 1, 4, 30], "len_seq": 3, "next": 3}\n')
  with pytest.raises(R.DataError, match=r"Test_data_last.jsonl:2: expected exactly one test "
                     "example with this row's history and target"):
    R.read_lastfm(str(tmp_path))


def test_sdpo_record_mismatch_is_named(tmp_path):
  (tmp_path / "jsonl").mkdir()
  (tmp_path / "id2name.txt").write_text("".join(f"{i}::T{i}\n" for i in range(30)))
  row = '{"seq": [0, 1, 2, 30], "len_seq": 3, "next": 3}'
  for f in ("train_data.jsonl", "Val_data.jsonl", "Test_data.jsonl"):
    (tmp_path / "jsonl" / f).write_text(row + "\n")
  cands = tmp_path / "cands"
  cands.mkdir()
  rec = {"historyList": "T0::T1::T2", "itemList": [f"T{i}" for i in range(3, 23)],
         "trueSelection": "T3"}
  (cands / "lastfm-val.json").write_text(json.dumps([rec]))
  (cands / "lastfm-test.json").write_text(json.dumps([dict(rec, historyList="T0::T9::T2")]))
  with pytest.raises(R.DataError, match=r"lastfm-test.json: record 0: history/target do not "
                     "match test example 0"):
    R.read_lastfm(str(tmp_path), candidates_dir=str(cands))


@pytest.mark.parametrize("id2name,match", [
    (b"0::A\n1::Caf\xe9\n", r"id2name.txt:2: byte b'\\xe9' at column 7 is not UTF-8"),
    (b"0::A\n-1::B\n", r"id2name.txt:2: item id -1 is negative"),
])
def test_id2name_encoding_and_negative_ids_are_named(tmp_path, id2name, match):
  folder = _generic(tmp_path)
  (tmp_path / "id2name.txt").write_bytes(id2name)
  with pytest.raises(R.DataError, match=match):
    R.read_generic(folder)


def test_utf8_byte_order_mark_is_read_as_utf8(tmp_path):
  folder = _generic(tmp_path)
  (tmp_path / "id2name.txt").write_bytes(b"\xef\xbb\xbf0::Alpha\n1::Beta\n2::Gamma\n3::Delta\n")
  (tmp_path / "train.jsonl").write_bytes(b'\xef\xbb\xbf{"seq": [0, 1, 2], "next": 3}\n')
  raw = R.read_generic(folder)
  assert raw.titles[0] == "Alpha" and raw.splits["train"] == [R.Window(0, (0, 1, 2), 3)]


@pytest.mark.parametrize("meta,match", [
    ('{"padding_id": 2', r"meta.json:1: not valid JSON"),
    ('{"padding_id": 2}', r"meta.json: field 'padding_id' is 2, the id of catalogue item 'Gamma'"),
    ('{"padding_id": true}', r"meta.json: field 'padding_id' must be an integer, got True"),
])
def test_bad_meta_json_is_named(tmp_path, meta, match):
  folder = _generic(tmp_path)
  (tmp_path / "meta.json").write_text(meta)
  with pytest.raises(R.DataError, match=match):
    R.read_generic(folder)


def test_json_true_is_not_an_item_id(tmp_path):
  with pytest.raises(R.DataError, match=r"train.jsonl:1: field 'seq' has item ids \[True\]"):
    R.read_generic(_generic(tmp_path, train=['{"seq": [0, true, 2], "next": 3}']))


def test_a_split_left_empty_says_why(tmp_path):
  with pytest.raises(R.DataError, match=r"train.jsonl: no examples left in split 'train': 2 "
                     r"row\(s\), all with fewer than min_history=3 history items"):
    R.read_generic(_generic(tmp_path, train=['{"seq": [0], "next": 3}', '{"seq": [1, 2], "next": 3}']))
  folder = _generic(tmp_path)
  (tmp_path / "val.jsonl").write_text("\n")
  with pytest.raises(R.DataError, match=r"val.jsonl: split 'val' has no rows"):
    R.read_generic(folder)


def test_titles_equal_after_disambiguation_are_an_error():
  with pytest.raises(R.DataError, match=r"titles of items \[.*\] are still equal"):
    R.unique_titles(["A", "A", "A [#1]"])


def test_titles_the_evaluator_cannot_tell_apart_are_disambiguated():
  """Two titles equal after the evaluator's normalisation (case, quotes, spaces) could never be
  answered validly: they are made unique like duplicates."""
  titles, changed = R.unique_titles(["Alpha", "'alpha'", "Beta", "\u201cBeta\u201d", "Gamma"])
  assert changed == 4 and titles[4] == "Gamma"
  normalized = [metrics.normalize(t) for t in titles]
  assert len(set(normalized)) == 5, normalized
