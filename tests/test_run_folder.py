"""A run folder is never lost: one launch per folder, outputs replaced only when their replacement
is ready, nothing the project did not write ever removed (rosepo_jax/runlock.py, staging.py)."""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO
import pytest

from rosepo_jax import checkpoints, files, pipeline, runlock, staging
from rosepo_jax import config as config_lib
from rosepo_jax.stages import export as export_stage
from rosepo_jax.stages import sft as sft_stage
from test_data_pipeline import _generic_folder
from test_stages import _tiny


def _replace_run(monkeypatch, run) -> None:
  """The sft stage with `run` instead of its own."""
  monkeypatch.setitem(pipeline.BY_NAME, "sft", dataclasses.replace(pipeline.BY_NAME["sft"],
                                                                   run=run))


def _snapshot(folder) -> dict[str, str]:
  """{relative path: sha256} of every file under `folder` but the lock (a launch's record)."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in set(names) - {"run.lock"}:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _config():
  config = _tiny(steps=2)
  config.methods = ("sft",)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run folder with the data and sft units finished."""
  workdir = str(tmp_path_factory.mktemp("trained") / "w")
  pipeline.run(_config(), workdir, ["data", "sft"])
  return workdir


def _copy(trained, tmp_path) -> str:
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  return workdir


def _generic_config(raw):
  config = _config()
  config.data.update(name="generic", manual_dir=raw, num_candidates=3)
  return config


def test_raw_data_in_the_run_folder_survives_reruns_and_force(tmp_path):
  """Case 1: the user's dataset stored in DIR/data. The data unit owns DIR/data/{tfds,tokenizer,
  stats.json,row_lengths.npz} only, and its key holds the content of the files it reads, not of
  the folder: an identical relaunch is up to date and --force leaves the raw files as they were."""
  workdir = tmp_path / "w"
  raw = str(workdir / "data")
  _generic_folder(raw)
  with open(os.path.join(raw, "README.txt"), "w") as f:
    f.write("my notes")
  before = _snapshot(raw)
  config = _generic_config(raw)
  assert pipeline.run(config, str(workdir), ["data"]) == {"data": "ran"}
  assert pipeline.run(config, str(workdir), ["data"]) == {"data": "up to date"}
  assert pipeline.run(config, str(workdir), ["data"], force=True) == {"data": "ran"}
  after = _snapshot(raw)
  assert {k: v for k, v in after.items() if k in before} == before
  marker = json.loads((workdir / "stages" / "data.json").read_text())
  assert not any(f.startswith("data/") and f[5:] in before for f in marker["files"])
  assert sorted(os.listdir(raw)) == sorted(
      ["README.txt", "id2name.txt", "row_lengths.npz", "stats.json", "test.jsonl", "tfds",
       "tokenizer", "train.jsonl", "val.jsonl"])


def test_a_foreign_file_among_a_units_outputs_stops_before_any_work(trained, tmp_path):
  """A file the project did not write, inside an output a unit would replace (--force), stops
  the command before any unit runs, naming the file; nothing changes."""
  workdir = _copy(trained, tmp_path)
  notes = os.path.join(workdir, "sft", "notes.txt")
  with open(notes, "w") as f:
    f.write("mine")
  before = _snapshot(workdir)
  with pytest.raises(staging.ForeignFilesError, match=f"{notes}: a file rosepo-jax did not "
                     r"write, among the outputs of sft.*nothing was changed"):
    pipeline.run(_config(), workdir, ["data", "sft"], force=True)
  assert _snapshot(workdir) == before
  # A stage output that exists without the unit ever finishing is not the project's either.
  other = str(tmp_path / "other")
  os.makedirs(os.path.join(other, "data", "tfds"))
  with open(os.path.join(other, "data", "tfds", "x.bin"), "wb") as f:
    f.write(b"\0")
  with pytest.raises(staging.ForeignFilesError, match=r"data/tfds/x.bin: a file rosepo-jax did "
                     "not write, among the outputs of data"):
    pipeline.run(_config(), other, ["data"])
  assert sorted(os.listdir(other)) == ["data", "run.lock"]


def test_a_unit_that_fails_leaves_its_previous_outputs(trained, tmp_path, monkeypatch):
  """Case 2 / item 2: a rerun that fails inside the stage (after writing part of its outputs)
  leaves the previous outputs and marker exactly as they were; the new outputs go only to the
  unit's staging folder."""
  workdir = _copy(trained, tmp_path)
  before = _snapshot(os.path.join(workdir, "sft"))
  marker = (tmp_path / "w" / "stages" / "sft.json").read_text()

  def failing(ctx, unit):
    sft_stage.run(ctx, unit)  # writes a whole new model, then fails
    raise RuntimeError("planted failure after the outputs were written")

  _replace_run(monkeypatch, failing)
  config = _config()
  config.sft.optim.learning_rate = 3e-3  # a changed config: the unit reruns
  with pytest.raises(RuntimeError, match="planted failure"):
    pipeline.run(config, workdir, ["sft"])
  assert _snapshot(os.path.join(workdir, "sft")) == before
  assert (tmp_path / "w" / "stages" / "sft.json").read_text() == marker
  staged = tmp_path / "w" / ".staging" / "sft"
  assert (staged / "new" / "sft" / "model").is_dir()  # written beside, never over
  state = json.loads((staged / "state.json").read_text())
  assert state["status"] == "running"


@pytest.mark.parametrize("key,value,message", [
    ("model.overrides.num_kv_heads", 3, "num_heads=2 is not a multiple of num_kv_heads=3"),
    ("model.overrides.hidden_size", -32, r"ModelConfig.hidden_size=-32: expected an integer >= 1"),
    ("model.copy_init_layers", (4,), r"layer 4 is out of range for a 1-layer model"),
    ("sft.accum_steps", 3, r"config.sft.batch_size=8: expected a multiple of "
     r"config.sft.accum_steps=3"),
    ("model.seed", -1, r"config.model.seed=-1: expected >= 0"),
    ("data.seed", -2, r"config.data.seed=-2: expected >= 0"),
])
def test_a_config_mistake_is_found_before_any_work(trained, tmp_path, key, value, message):
  """Case 2: mistakes a stage used to find only when it ran (after the previous results were
  removed) stop the command before any unit runs; the run folder is unchanged."""
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  config = _config()
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    pipeline.run(config, workdir, ["sft"])
  assert _snapshot(workdir) == before


def test_a_second_launch_is_refused_and_a_dead_holders_lock_is_taken_over(trained, tmp_path,
                                                                         capsys):
  """Case 3 / item 1: while a launch holds the folder, another is refused in one line naming the
  holder (host, pid, start, command), before any work; a lock whose holder is gone is taken
  over, with a message saying whose it was."""
  workdir = _copy(trained, tmp_path)
  lock = os.path.join(workdir, "run.lock")
  with runlock.hold(lock, "python -m launch.main --workdir=first"):
    before = _snapshot(workdir)
    with pytest.raises(runlock.LockError, match=rf"{workdir} is in use by another launch \(pid "
                       rf"{os.getpid()} on .*, started .*: python -m launch.main "
                       r"--workdir=first\)"):
      pipeline.run(_config(), workdir, ["sft"], force=True)
    assert _snapshot(workdir) == before
  assert json.loads(open(lock).read())["released"]
  # A holder that is gone: a process that has ended, its record left behind (as after SIGKILL).
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  with open(lock, "w") as f:
    json.dump({"host": os.uname().nodename, "pid": int(gone.stdout), "started": "earlier",
               "heartbeat": time.time(), "command": "the killed launch"}, f)
  capsys.readouterr()
  assert pipeline.run(_config(), workdir, ["sft"]) == {"sft": "up to date"}
  assert f"took over the lock of pid {int(gone.stdout)}" in capsys.readouterr().out


def test_a_holder_on_another_host_with_a_fresh_heartbeat_is_refused(tmp_path):
  """A shared filesystem whose flock does not reach across hosts: the heartbeat of a live
  holder elsewhere still refuses the launch; a stale heartbeat is taken over."""
  lock = str(tmp_path / "run.lock")
  record = {"host": "another-host", "pid": 1, "started": "then", "command": "elsewhere"}
  with open(lock, "w") as f:
    json.dump({**record, "heartbeat": time.time()}, f)
  with pytest.raises(runlock.LockError, match="pid 1 on another-host"):
    with runlock.hold(lock, "here"):
      pass
  with open(lock, "w") as f:
    json.dump({**record, "heartbeat": time.time() - 2 * runlock.STALE_S}, f)
  with runlock.hold(lock, "here"):
    assert json.loads(open(lock).read())["command"] == "here"


def test_a_failed_export_keeps_the_previous_export(trained, tmp_path, monkeypatch):
  """Case 4: a rerun with another export.dtype writes the new export beside the old one; when it
  fails, the previous export is exactly as it was; when it succeeds, it replaces it."""
  workdir = _copy(trained, tmp_path)
  pipeline.run(_config(), workdir, ["export"])
  folder = os.path.join(workdir, "export", "sft")
  before = _snapshot(folder)
  config = _config()
  config.export.dtype = "bfloat16"
  real = checkpoints.save_hf

  def failing(model, dst, **kw):
    real(model, dst, **kw)
    raise OSError("planted: disk full after the weights were written")

  monkeypatch.setattr(export_stage.checkpoints, "save_hf", failing)
  with pytest.raises(OSError, match="planted"):
    pipeline.run(config, workdir, ["export"])
  assert _snapshot(folder) == before
  monkeypatch.setattr(export_stage.checkpoints, "save_hf", real)
  assert pipeline.run(config, workdir, ["export"]) == {"export/sft": "ran"}
  assert json.load(open(os.path.join(folder, "config.json")))["torch_dtype"] == "bfloat16"
  assert not os.path.exists(os.path.join(workdir, ".staging"))


def test_a_swap_cut_short_is_finished_by_the_next_launch(trained, tmp_path, monkeypatch):
  """A launch killed while it moves a finished unit's outputs into place: the next launch
  finishes the move before anything else (new outputs in place, marker listing them), and does
  not rerun the unit."""
  workdir = _copy(trained, tmp_path)
  config = _config()
  config.sft.optim.learning_rate = 3e-3
  real = files.rename

  def rename(src, dst):
    if src == os.path.join(workdir, ".staging", "sft", "new", "sft"):  # the old one moved away
      raise KeyboardInterrupt("planted: killed during the swap")
    real(src, dst)

  monkeypatch.setattr(files, "rename", rename)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(config, workdir, ["sft"])
  monkeypatch.setattr(files, "rename", real)
  assert not os.path.exists(os.path.join(workdir, "sft"))  # half moved
  outcome = pipeline.run(config, workdir, ["sft"])
  assert outcome == {"sft": "up to date"}  # the finished unit was swapped in, not rerun
  marker = json.loads(open(os.path.join(workdir, "stages", "sft.json")).read())
  assert sorted(marker["files"]) == sorted(
      f"sft/{f}" for f in files.tree(os.path.join(workdir, "sft")))
  assert not os.path.exists(os.path.join(workdir, ".staging"))


def test_a_file_put_among_the_outputs_while_the_unit_ran_waits_the_swap(trained, tmp_path,
                                                                       monkeypatch):
  """A file a user puts among the previous outputs while the unit runs stops the swap (nothing
  moves, the file stays); once it is moved out, the next launch swaps the waiting outputs in
  without running the unit again."""
  workdir = _copy(trained, tmp_path)
  config = _config()
  config.sft.optim.learning_rate = 3e-3
  notes = os.path.join(workdir, "sft", "notes.txt")

  def running(ctx, unit):
    sft_stage.run(ctx, unit)
    with open(notes, "w") as f:
      f.write("written meanwhile")

  _replace_run(monkeypatch, running)
  with pytest.raises(staging.ForeignFilesError, match="notes.txt"):
    pipeline.run(config, workdir, ["sft"])
  assert open(notes).read() == "written meanwhile"
  os.remove(notes)
  monkeypatch.undo()
  ran = []
  _replace_run(monkeypatch, lambda ctx, unit: ran.append(unit))
  assert pipeline.run(config, workdir, ["sft"]) == {"sft": "up to date"} and not ran


def test_sigkill_during_sft_resumes_in_the_staging_folder_with_the_old_model_intact(
    trained, tmp_path):
  """Case 3's cousin, as commands: SIGKILL a launch while its SFT trains; the previous model is
  untouched meanwhile and after; the relaunch takes over the dead launch's lock, resumes from
  the staging folder's checkpoint and swaps the new model in."""
  workdir = _copy(trained, tmp_path)
  before = _snapshot(os.path.join(workdir, "sft", "model"))
  args = [sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          "--config.methods=('sft',)", "--config.sft.steps=300", "--config.sft.checkpoint_every=5",
          "--stages=data,sft"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  log = open(tmp_path / "killed.log", "w")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  lock, deadline = os.path.join(workdir, "run.lock"), time.time() + 300

  def wait_for(done, what):
    while not done():
      assert proc.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
      assert time.time() < deadline, f"{what} after 300 s"
      time.sleep(0.05)

  wait_for(lambda: f'"pid": {proc.pid},' in open(lock).read(), "the first launch holds no lock")
  second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
  assert f"error: {workdir} is in use by another launch (pid {proc.pid} on" in second.stderr
  checkpoint = os.path.join(workdir, ".staging", "sft", "new", "sft", "checkpoints", "10")
  wait_for(lambda: os.path.isdir(checkpoint), "no checkpoint at step 10")
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert _snapshot(os.path.join(workdir, "sft", "model")) == before
  again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"took over the lock of pid {proc.pid}" in again.stdout
  assert "sft: resuming an interrupted run" in again.stdout
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "sft", "metrics.jsonl"))]
  assert metrics[0]["step"] == 1 and metrics[-1]["step"] == 300  # one history, both launches
  assert _snapshot(os.path.join(workdir, "sft", "model")) != before
  assert not os.path.exists(os.path.join(workdir, ".staging"))
