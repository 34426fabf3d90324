"""The whole pipeline (configs/tiny.py: data through report, methods sft, dpo, rosepo) as one job of
2 processes on localhost, launched exactly as launch/README.md documents, against the same
pipeline in 1 process: the same eval figures and exported weights; a process killed during
preference training and a relaunch that resumes; a process that raises ends the job."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import REPO
import numpy as np
import pytest
from safetensors.numpy import load_file

import failing_launch

RUNS = ("sft", "dpo", "rosepo")


def _port() -> str:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return str(s.getsockname()[1])


def _launch(workdir, processes: int, devices: int, mesh: dict, log_prefix: str,
            script=("-m", "launch.main"), extra=()) -> list[subprocess.Popen]:
  """launch/README.md's command on localhost: the same command in every process, the job's
  settings in JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, `devices` fake CPU
  devices per process."""
  port, procs = _port(), []
  for i in range(processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    args = [sys.executable, *script, "--config=configs/tiny.py", f"--workdir={workdir}"]
    args += [f"--config.mesh.{axis}={size}" for axis, size in mesh.items()] + list(extra)
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(i))
      args.insert(len(script) + 1, "--distributed")
    with open(f"{log_prefix}{i}.log", "w") as log:
      procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
  return procs


def _wait(procs, log_prefix: str, timeout: float = 600) -> list[int]:
  codes = []
  for i, p in enumerate(procs):
    try:
      codes.append(p.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"process {i} still running after {timeout} s:\n" + _tail(f"{log_prefix}{i}.log"))
  return codes


def _tail(path: str, n: int = 3000) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()[-n:]


def _run(workdir, processes, devices, mesh, log_prefix, extra=()) -> None:
  procs = _launch(workdir, processes, devices, mesh, log_prefix, extra=extra)
  for i, code in enumerate(_wait(procs, log_prefix)):
    assert code == 0, _tail(f"{log_prefix}{i}.log")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  root = tmp_path_factory.mktemp("one")
  _run(root / "w", 1, 1, {}, str(root / "log"))
  return root / "w"


def _assert_same_results(workdir, reference) -> None:
  """Eval figures (counts exact, floats within 1e-5), answers, exported weights (1e-5 relative)."""
  for run in RUNS:
    ours = json.loads((workdir / "eval" / f"{run}.json").read_text())
    ref = json.loads((reference / "eval" / f"{run}.json").read_text())
    for key, value in ref.items():
      if key == "seconds" or not isinstance(value, (int, float)):
        continue
      if isinstance(value, int):
        assert ours[key] == value, (run, key)
      else:
        assert ours[key] == pytest.approx(value, abs=1e-5), (run, key)
    answers = lambda d: [json.loads(line)["answer"]  # pylint: disable=unnecessary-lambda-assignment
                         for line in (d / "eval" / f"{run}.predictions.jsonl").open()]
    assert answers(workdir) == answers(reference)
    mine = load_file(str(workdir / "export" / run / "model.safetensors"))
    theirs = load_file(str(reference / "export" / run / "model.safetensors"))
    assert mine.keys() == theirs.keys()
    for name, want in theirs.items():
      err = np.abs(mine[name].astype(np.float64) - want).max()
      assert err <= 1e-5 * max(np.abs(want).max(), 1e-6), (run, name, err)
  assert (workdir / "report.md").is_file()


def test_two_processes_one_device_each_match_one_process(tmp_path, one_process):
  _run(tmp_path / "w", 2, 1, {"data": 1, "fsdp": 2}, str(tmp_path / "log"))
  _assert_same_results(tmp_path / "w", one_process)


def test_two_processes_on_a_gs_workdir_match_one_process(tmp_path, one_process, monkeypatch):
  """The same job with --workdir=gs://...: both processes reach one bucket through epath's fsspec
  backend (`fake_gcs`, kept in a local folder; orbax and tensorboardX get that folder's path)."""
  store = tmp_path / "store"
  monkeypatch.setenv("FAKE_GCS_ROOT", str(store))
  logs = str(tmp_path / "log")
  procs = _launch("gs://bucket/w", 2, 1, {"data": 1, "fsdp": 2}, logs,
                  script=("tests/gcs_launch.py",))
  for i, code in enumerate(_wait(procs, logs)):
    assert code == 0, _tail(f"{logs}{i}.log")
  _assert_same_results(store / "bucket" / "w", one_process)
  assert not (tmp_path / "gs:").exists() and not os.path.exists(os.path.join(REPO, "gs:"))


def test_two_processes_two_devices_killed_in_preference_resume(tmp_path, one_process):
  """2 processes x 2 devices (data=2, fsdp=2); SIGKILL process 1 while the dpo method trains
  (after its step-2 checkpoint): process 0 ends non-zero once the heartbeat timeout has passed
  (a killed process says nothing); relaunching both resumes the interrupted unit and ends with
  the 1-process figures."""
  workdir, mesh, logs = tmp_path / "w", {"data": 2, "fsdp": 2}, str(tmp_path / "log")
  heartbeat = ("--heartbeat_timeout_s=20",)
  procs = _launch(workdir, 2, 2, mesh, logs, extra=heartbeat)
  checkpoint = workdir / ".staging" / "dpo.dpo" / "new" / "dpo" / "checkpoints" / "2"
  deadline = time.time() + 600
  while not checkpoint.is_dir():
    assert all(p.poll() is None for p in procs), _tail(logs + "0.log") + _tail(logs + "1.log")
    assert time.time() < deadline, "no dpo checkpoint after 600 s"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.time()
  code = _wait(procs[:1], logs, timeout=120)[0]
  assert code != 0 and time.time() - killed < 60
  state = json.loads((workdir / ".staging" / "dpo.dpo" / "state.json").read_text())
  assert state["status"] == "running"  # killed inside the unit, not between units
  assert not (workdir / "stages" / "dpo.dpo.json").exists() and not (workdir / "dpo").exists()
  _run(workdir, 2, 2, mesh, str(tmp_path / "again"), extra=heartbeat)
  again = _tail(str(tmp_path / "again0.log"), 100000)
  assert "sft: up to date" in again and "dpo/dpo: resuming an interrupted run" in again
  _assert_same_results(workdir, one_process)


def test_a_process_that_raises_ends_the_job(tmp_path):
  logs = str(tmp_path / "log")
  procs = _launch(tmp_path / "w", 2, 1, {"data": 1, "fsdp": 2}, logs,
                  script=("tests/failing_launch.py",))
  ended, deadline = {}, time.time() + 300
  while len(ended) < 2 and time.time() < deadline:
    ended.update({i: time.time() for i, p in enumerate(procs) if i not in ended and p.poll() is not None})
    time.sleep(0.1)
  codes = _wait(procs, logs, timeout=1)
  assert all(c != 0 for c in codes), codes
  assert ended[0] - ended[1] < 120  # process 0 ends soon after process 1 raised
  failed = _tail(logs + "1.log")
  assert failing_launch.PLANTED in failed and "error (process 1 of 2): the job stops" in failed
  assert "error (process 0 of 2): the job stops" in _tail(logs + "0.log")
