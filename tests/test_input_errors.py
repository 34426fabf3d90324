"""Every bad input is the project's one-line error, naming the file, line, field, flag or config
key and what was expected: bounded in time and memory, found before any work where no data is
needed (docs/robustness.md)."""

import json
import os
import subprocess
import sys
import time

from conftest import REPO
import pytest

from rosepo_jax import checkpoints, pipeline, workdir
from rosepo_jax import config as config_lib
from rosepo_jax.data import records
from rosepo_jax.errors import InputError
from test_data_pipeline import TITLES, _generic_folder
from test_stages import _tiny


def _id2name(tmp_path, lines) -> str:
  path = str(tmp_path / "id2name.txt")
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write("".join(line + "\n" for line in lines))
  return path


# ------------------------------------------------------------------------------------------------
# Data files


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\t", "\x1c", "\x00",
                                  "\r"])
def test_a_title_with_a_line_break_or_control_character_is_named(tmp_path, char):
  """Case 5 and its class: U+2028 (which str.splitlines breaks at, so the report failed on every
  run), the other line and paragraph separators and every control character."""
  path = _id2name(tmp_path, ["0::Alpha", f"1::Be{char}ta", "2::Gamma"])
  with pytest.raises(records.DataError, match=rf"{path}:2: the title of item 1 holds the control "
                     rf"or line-separator character U\+{ord(char):04X} at column 3"):
    records.read_id2name(path)


@pytest.mark.parametrize("title", ["\u200b", "\u00a0\u200d", "\u0301", "''", "\u3000"])
def test_an_invisible_title_is_named(tmp_path, title):
  """Case 8: a title that shows nothing (an empty answer would count as that item)."""
  path = _id2name(tmp_path, ["0::Alpha", f"1::{title}"])
  with pytest.raises(records.DataError, match=rf"{path}:2: the title of item 1 has no visible "
                     "character"):
    records.read_id2name(path)


def test_a_huge_item_id_is_named_at_once(tmp_path):
  """Case 6: one id of 2**40 used to build set(range(2**40 + 1)): all memory. Now a DataError in
  milliseconds naming the gap and the max id."""
  path = _id2name(tmp_path, ["0::Alpha", f"{2 ** 40}::Beta", "2::Gamma"])
  start = time.time()
  with pytest.raises(records.DataError, match=rf"{path}: item ids must be 0..2 without gaps \(one "
                     rf"per line\); missing \[1\], max id {2 ** 40}"):
    records.read_id2name(path)
  assert time.time() - start < 5


@pytest.mark.parametrize("key", ["\u00b2", "\u0661", "1_0", "0x1", "1.0", " ", "+-1"])
def test_an_id_that_is_not_ascii_digits_is_named(tmp_path, key):
  """Case 6's other half: ids int() rejects ("²") or reads loosely ("١", "1_0") are refused with
  the file and line, never a raw ValueError."""
  path = _id2name(tmp_path, ["0::Alpha", f"{key}::Beta"])
  with pytest.raises(records.DataError, match=rf"{path}:2: expected 'id::title' with an integer "
                     "id"):
    records.read_id2name(path)


@pytest.mark.parametrize("user", [2 ** 63, 2 ** 70, -1])
def test_a_user_id_that_does_not_fit_is_named(tmp_path, user):
  folder = tmp_path / "raw"
  _generic_folder(str(folder))
  rows = [json.loads(line) for line in open(folder / "train.jsonl")]
  rows[3]["user"] = user
  with open(folder / "train.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  with pytest.raises(records.DataError, match=rf"train.jsonl:4: field 'user'={user}: expected an "
                     r"integer in \[0, 2\*\*63\)"):
    records.read_generic(str(folder))


def test_a_movielens_title_with_a_control_character_is_named(tmp_path):
  with open(tmp_path / "u.item", "w", encoding="iso-8859-1") as f:
    f.write("1|Toy Story (1995)|x\n2|Bad\x85Title (1995)|x\n")
  (tmp_path / "u.data").write_text("1\t1\t5\t1\n")
  with pytest.raises(records.DataError, match=r"u.item:2: field title holds the control or "
                     r"line-separator character U\+0085"):
    records.read_movielens(str(tmp_path))


def test_json_lines_keep_records_whole_across_unicode_line_breaks(tmp_path):
  """The reader of every JSON-lines file under DIR splits at "\\n" only: a string holding U+2028,
  U+2029 or U+0085 (JSON does not escape them) stays one record."""
  rows = [{"answer": f"a{c}b", "i": i} for i, c in enumerate("\u2028\u2029\x85\x1e")]
  path = str(tmp_path / "p.jsonl")
  workdir.write_jsonl(path, rows)
  assert workdir.read_jsonl(path) == rows


def _generic_run(tmp_path, **edit):
  raw = str(tmp_path / "raw")
  _generic_folder(raw, **edit)
  config = _tiny(steps=2)
  config.methods = ("sft",)
  config.data.update(name="generic", manual_dir=raw, num_candidates=3)
  return raw, config


def test_a_one_user_validation_split_is_named(tmp_path):
  """Case 8: a 1-row validation split used to fit tau from one example and give [0, 0]
  intervals; now the data stage stops, naming the split and what it needs."""
  raw, config = _generic_run(tmp_path)
  with open(os.path.join(raw, "val.jsonl")) as f:
    first = f.readline()
  with open(os.path.join(raw, "val.jsonl"), "w") as f:
    f.write(first)
  with pytest.raises(records.DataError, match=r"split 'val' holds 1 example\(s\) of 1 user\(s\); "
                     r"expected at least 2 users \(the oracle's temperature is fitted on it\)"):
    pipeline.run(config, str(tmp_path / "w"), ["data"])
  assert not (tmp_path / "w" / "data").exists()  # nothing swapped in


def test_a_title_with_u2028_stops_the_data_stage_before_anything_is_written(tmp_path):
  """Case 5 through the pipeline: the data stage names the file and line; no data is published."""
  raw, config = _generic_run(tmp_path, titles=TITLES[:4] + ("Eps\u2028ilon",) + TITLES[5:])
  with pytest.raises(records.DataError, match=r"id2name.txt:5: the title of item 4 holds the "
                     r"control or line-separator character U\+2028"):
    pipeline.run(config, str(tmp_path / "w"), ["data"])
  assert not (tmp_path / "w" / "data").exists() and not (tmp_path / "w" / "stages").exists()


# ------------------------------------------------------------------------------------------------
# Config values and the files a config names, before any stage runs


def _parse_error(edit, message):
  config = _tiny()
  edit(config)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.parse(config)


def _set(key, value):
  def edit(config):
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  return edit


@pytest.mark.parametrize("key,value,message", [
    ("prompt.domain", "xyz", r"config.prompt.domain='xyz': expected one of \['', 'music', "),
    ("prompt.templates", ("no fields Answer:",), r"config.prompt.templates\[0\]=.*expected "
     r"\{history\} once, found it 0 times"),
    ("prompt.templates", ("{history} {candidates} {user} Answer:",), r"unknown field\(s\) "
     r"\['user'\]"),
    ("prompt.templates", ("{history} {candidates} Pick one",), "expected it to end with "
     "'Answer:'"),
    ("prompt.templates", ("{history} {candidates Answer:",), "not a format string"),
    ("tokenizer.kind", "pretrained", r"config.tokenizer.path='': tokenizer.kind='pretrained' "
     "needs"),
    ("data.world.num_genres", 99, r"config.data.world.num_genres=99: expected 1..12"),
    ("data.world.val_fraction", 0.95, r"config.data.world.val_fraction \+ test_fraction = "
     r"1.05: expected < 1"),
    ("data.world.min_len", 0, r"config.data.world.min_len=0, max_len=16: expected 1 <= min_len"),
    ("oracle.num_heads", 3, r"config.oracle.dim=64: expected a multiple of "
     r"config.oracle.num_heads=3"),
    ("preference.optim.b1", 1.0, r"config.preference.optim.b1=1.0: expected in \[0, 1\)"),
    ("model.copy_init_gain", 0.0, r"config.model.copy_init_gain=0.0: expected > 0"),
    ("oracle.seed", -3, r"config.oracle.seed=-3: expected >= 0"),
    ("model.overrides.head_dim", "16", r"ModelConfig.head_dim='16': expected an integer >= 1"),
    ("preference.accum_steps", 3, r"config.preference.batch_size=4: expected a multiple of "
     r"config.preference.accum_steps=3"),
    ("sft.history_loss_weight", 1.0, r"config.sft.history_loss_weight=1.0 needs "
     r"config.tokenizer.title_tokens=True"),
    ("report.baselines", ("kto",), r"config.report.baselines\[0\]='kto': not a run of "
     r"config.methods"),
])
def test_config_values_that_no_stage_could_use_are_named(key, value, message):
  _parse_error(_set(key, value), message)


def test_the_ideal_eps_needs_a_world_that_knows_it():
  config = _tiny()
  config.methods = ("sft", "rosepo_world")
  config_lib.parse(config)  # the synthetic world

  def elsewhere(c):
    c.methods = ("sft", "rosepo_world")
    c.data.update(name="generic")

  _parse_error(elsewhere, r"config.methods\[1\]='rosepo_world' takes each pair's eps from the "
               "synthetic world")


def test_strategy_weights_that_leave_a_method_nothing_to_train_on_are_named():
  """Case 8: all strategy weights 0 trained rosepo with loss 0 and grad norm 0 and reported
  success; a method whose own strategies all weigh 0 is an error too."""
  zero = dict(random=0.0, self_hard=0.0, semantic=0.0, popularity=0.0, hallucination=0.0)

  def all_zero(config):
    config.methods = ("sft", "rosepo")
    config.preference.strategy_weights = zero

  _parse_error(all_zero, r"every strategy 'rosepo' trains on \(\['random', 'self_hard', "
               r"'semantic', 'popularity', 'hallucination'\]\) has weight 0")

  def own_zero(config):
    config.methods = ("sft", "rosepo", "rosepo_no_semantic")
    config.negatives.strategies = ("semantic", "popularity")
    config.preference.strategy_weights = {**zero, "semantic": 1.0}

  _parse_error(own_zero, r"every strategy 'rosepo_no_semantic' trains on \(\['popularity'\]\)")

  def no_oracle_pairs(config):
    config.methods = ("sft", "cdpo")
    config.negatives.strategies = ("semantic",)

  _parse_error(no_oracle_pairs, r"config.smoothing.cdpo_eps=-1.0 asks 'cdpo' for the mean oracle "
               "eps")


def test_stage_names_are_checked(tmp_path):
  """Case 7: `--stages=` ran nothing and said nothing; `--stages=dta` was a raw ValueError."""
  for stages, message in (([], r"--stages=: names no stage"),
                          ([""], r"--stages=: names no stage"),
                          (["dta"], r"--stages: unknown stage\(s\) \['dta'\]; expected some of")):
    with pytest.raises(pipeline.StageNameError, match=message):
      pipeline.run(_tiny(), str(tmp_path / "w"), stages)
  assert not (tmp_path / "w").exists()


def test_a_mesh_that_does_not_fit_the_devices_is_named(tmp_path):
  config = _tiny()
  config.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(config_lib.ConfigError, match=r"config.mesh=\{'data': 3, 'fsdp': 1, "
                     r"'tensor': 1\}: mesh: data\*fsdp\*tensor = 3 but 8 devices"):
    pipeline.run(config, str(tmp_path / "w"), ["data"])


def test_files_a_config_names_are_checked_before_any_work(tmp_path):
  """Case 7: a missing manual_dir (a raw FileNotFoundError from inside TFDS), a pretrained
  tokenizer or model that is not there: named with their key before any stage runs."""
  config = _tiny()
  config.data.update(name="generic", manual_dir=str(tmp_path / "nowhere"), num_candidates=3)
  with pytest.raises(records.MissingFileError, match=rf"config.data.manual_dir="
                     rf"'{tmp_path}/nowhere': {tmp_path}/nowhere is not a folder"):
    pipeline.run(config, str(tmp_path / "w"), ["data"])
  config = _tiny()
  config.tokenizer.update(kind="pretrained", path=str(tmp_path / "tok"))
  with pytest.raises(checkpoints.CheckpointNotFoundError, match=rf"config.tokenizer.path="
                     rf"{tmp_path}/tok: no tokenizer there"):
    pipeline.run(config, str(tmp_path / "w"), ["data"])
  config = _tiny()
  config.model.update(init=str(tmp_path / "model"), copy_init_layers=())
  with pytest.raises(checkpoints.CheckpointNotFoundError, match=rf"config.model.init="
                     rf"{tmp_path}/model: not a model"):
    pipeline.run(config, str(tmp_path / "w"), ["data", "sft"])
  assert sorted(os.listdir(tmp_path / "w")) == ["run.lock"]


def test_rows_longer_than_the_models_positions_stop_the_data_stage(tmp_path):
  config = _tiny()
  config.model.overrides.max_position_embeddings = 128
  config.data.max_seq_len = 0
  with pytest.raises(config_lib.ConfigError, match=r"config.model: the model has 128 positions "
                     r"\(max_position_embeddings\), but the longest \w+ row"):
    pipeline.run(config, str(tmp_path / "w"), ["data"])


# ------------------------------------------------------------------------------------------------
# The launchers: one line, exit code 2, no traceback


def _launch(tmp_path, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and lines[-1].startswith("error: "), proc.stderr[-3000:]
  return lines[-1]


def test_command_line_mistakes_are_one_line(tmp_path):
  """Case 7: a typo in an override printed three chained tracebacks from ml_collections; a
  missing or raising config file, a bad stage name likewise."""
  w = f"--workdir={tmp_path / 'w'}"
  main = ("launch.main", "--config=configs/tiny.py", w)
  assert _launch(tmp_path, *main, "--config.sft.step=10") == (
      "error: --config.sft.step=10: config.sft has no key 'step'; did you mean 'steps'? "
      "(config.sft takes ['accum_steps', 'batch_size', 'candidate_curriculum', "
      "'checkpoint_every', 'eval_every', 'eval_examples', 'history_loss_weight', 'keep', "
      "'keep_checkpoints', 'log_every', 'optim', 'steps'])")
  assert _launch(tmp_path, "launch.main", "--config=configs/nowhere.py", w) == (
      "error: --config=configs/nowhere.py: no such file")
  raising = tmp_path / "raising.py"
  raising.write_text("def get_config():\n  return {}['missing']\n")
  assert _launch(tmp_path, "launch.main", f"--config={raising}", w) == (
      f"error: --config={raising}: loading it raised KeyError: 'missing' (line 2)")
  assert _launch(tmp_path, *main, "--stages=").startswith("error: --stages=: names no stage")
  assert _launch(tmp_path, *main, "--stages=dta").startswith(
      "error: --stages: unknown stage(s) ['dta']")
  assert _launch(tmp_path, *main, "--config.sft.steps=ten").startswith(
      "error: flag --config.sft.steps=ten: ")
  assert not (tmp_path / "w").exists()


def test_convert_and_generate_inputs_are_one_line(tmp_path, smollm2_gguf):
  """Case 7: convert on a folder that is no model or a truncated GGUF; generate with an empty
  prompt, --max_new_tokens=-1, or a prompt longer than the model's positions (case 8)."""
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "a.txt").write_text("not a model")
  assert _launch(tmp_path, "launch.convert", f"--src={tmp_path / 'notes'}",
                 f"--dst={tmp_path / 'out'}").startswith(
                     f"error: --src={tmp_path / 'notes'}: not a model; expected a .gguf file")
  truncated = tmp_path / "cut.gguf"
  with open(smollm2_gguf, "rb") as f:
    truncated.write_bytes(f.read(1 << 20))
  assert _launch(tmp_path, "launch.convert", f"--src={truncated}",
                 f"--dst={tmp_path / 'out'}").startswith(
                     f"error: {truncated}: not a readable GGUF file")
  assert not (tmp_path / "out").exists()
  model = tmp_path / "tiny"
  from rosepo_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  checkpoints.save_orbax(model_lib.init_model(model_lib.get_config("tiny"), seed=0), str(model))
  gen = ("launch.generate", f"--model={model}")
  assert _launch(tmp_path, *gen, "--prompt_ids=1,2", "--max_new_tokens=-1") == (
      "error: --max_new_tokens=-1: expected >= 1")
  assert _launch(tmp_path, *gen, "--prompt_ids=") == (
      "error: --prompt_ids= holds no token ids; give a non-empty prompt")
  long_prompt = ",".join(["1"] * 510)
  assert _launch(tmp_path, *gen, f"--prompt_ids={long_prompt}", "--max_new_tokens=8") == (
      "error: the prompt's 510 tokens plus --max_new_tokens=8 exceed the model's 512 positions "
      "(max_position_embeddings)")


def test_every_input_error_is_one_class():
  """The launchers print InputError as one line: every error class named above is one."""
  for cls in (records.DataError, records.MissingFileError, config_lib.ConfigError,
              pipeline.StageNameError, checkpoints.CheckpointError,
              checkpoints.CheckpointNotFoundError):
    assert issubclass(cls, InputError), cls
