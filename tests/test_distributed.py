"""Multi-process JAX on localhost CPU: 2 processes (1 device each, gloo collectives) run 3 sharded
DPO steps and end with the parameters of a 1-process run of the same global batches; the 2-process
checkpoint restores in a single process."""

import os
import socket
import subprocess
import sys

from conftest import REPO
import numpy as np

from rosepo_jax import losses
from rosepo_jax import model as M
from rosepo_jax import train as T

HELPER = os.path.join(REPO, "tests", "distributed_helper.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(num_processes: int, workdir: str) -> None:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  port = str(_free_port())
  os.makedirs(workdir, exist_ok=True)
  logs = [os.path.join(workdir, f"process{i}.log") for i in range(num_processes)]
  procs = []
  for i, log in enumerate(logs):  # output to files: a full pipe would stall a process
    with open(log, "w") as f:
      procs.append(subprocess.Popen(
          [sys.executable, HELPER, str(i), str(num_processes), port, workdir], cwd=REPO, env=env,
          stdout=f, stderr=subprocess.STDOUT))
  for p in procs:
    p.wait(timeout=600)
  outputs = [open(log).read() for log in logs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert f"process 0/{num_processes}: 2 devices" in outputs[0], outputs[0]


def test_two_processes_match_one_and_checkpoint_restores_in_one(tmp_path):
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  _launch(2, two)
  _launch(1, one)
  a, b = np.load(os.path.join(two, "params.npz")), np.load(os.path.join(one, "params.npz"))
  assert sorted(a.files) == sorted(b.files)
  initial = M.init_model(M.get_config("tiny"), seed=2)
  moved = 0.0
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)
  # The steps really trained: parameters moved from their initial values.
  init = {"/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in __import__("flax").nnx.state(initial, __import__("flax").nnx.Param)
          .flat_state()}
  moved = max(np.abs(a[k] - init[k]).max() for k in a.files)
  assert moved > 1e-3
  # The 2-process (sharded, multi-host) checkpoint restores here, in one process.
  trainer = T.Trainer(initial, T.preference_loss_fn(losses.dpo, 1, 1.0, 64),
                      T.make_optimizer(T.OptimConfig(learning_rate=1e-2, warmup_steps=1), 3))
  state = T.restore_latest(os.path.join(two, "checkpoints"), trainer.initial)
  assert state is not None and state.step == 3
  for k, v in state.params.flat_state():
    np.testing.assert_array_equal(np.asarray(v.get_value()), a["/".join(map(str, k))])
