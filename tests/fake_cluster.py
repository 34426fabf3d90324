"""Stand-ins for the cluster tools launch/README.md's commands call, so that those commands run
unchanged on localhost (tests/test_launch.py):

  gcloud compute tpus tpu-vm create|scp|ssh   a TPU slice of $FAKE_TPU_WORKERS workers, each a
                                              folder $FAKE_TPU_ROOT/worker<i> (its home); `ssh
                                              --worker=all --command=C` runs C in every worker at
                                              once with the job's settings in JAX_COORDINATOR_ADDRESS,
                                              JAX_NUM_PROCESSES, JAX_PROCESS_ID (what a TPU VM's
                                              metadata gives JAX), 1 CPU device each
  srun --nodes=N --ntasks-per-node=T CMD...   N*T copies of CMD with the SLURM variables JAX's
                                              cluster detection reads (SLURM_JOB_ID, ..._PROCID)
  python3 -m pip ...                          (on a fake worker) does nothing: the test's packages
                                              are already installed
  python3 -m launch.main ...                  runs it; with $FAKE_GCS_ROOT set, gs:// paths go to
                                              that stand-in bucket (tests/gcs_launch.py)

Every call is appended to $FAKE_CLUSTER_LOG as one JSON line (the tool and its arguments).
Usage: fake_cluster.py TOOL ARGS... (the shims the test puts on PATH call it so).
"""

import json
import os
import random
import shutil
import socket
import subprocess
import sys


def _log(tool: str, args: list[str]) -> None:
  with open(os.environ["FAKE_CLUSTER_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps({"tool": tool, "args": args}) + "\n")


def _options(args: list[str]) -> tuple[dict[str, str], list[str]]:
  """--name=value options and the positional arguments, in order."""
  opts, positional = {}, []
  for a in args:
    if a.startswith("--") and "=" in a:
      name, value = a[2:].split("=", 1)
      opts[name] = value
    else:
      positional.append(a)
  return opts, positional


def _run_all(commands: list[tuple[list[str], str, dict]]) -> int:
  """Runs every (argv, cwd, env) at once; the first non-zero exit status, else 0."""
  procs = [subprocess.Popen(argv, cwd=cwd, env=env) for argv, cwd, env in commands]
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)


def _cpu_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_P",
                                                                  "JAX_PROCESS", "SLURM_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1", **extra)
  return env


def gcloud(args: list[str]) -> int:
  if args[:3] != ["compute", "tpus", "tpu-vm"] or len(args) < 4:
    print(f"fake gcloud: unsupported command {args}", file=sys.stderr)
    return 2
  verb, (opts, positional) = args[3], _options(args[4:])
  if "zone" not in opts:
    print("fake gcloud: --zone is required", file=sys.stderr)
    return 2
  workers = [os.path.join(os.environ["FAKE_TPU_ROOT"], f"worker{i}")
             for i in range(int(os.environ["FAKE_TPU_WORKERS"]))]
  if verb == "create":
    for w in workers:
      os.makedirs(w, exist_ok=True)
    return 0
  if opts.get("worker") != "all":
    print(f"fake gcloud: {verb} without --worker=all reaches one worker only", file=sys.stderr)
    return 2
  if not all(os.path.isdir(w) for w in workers):
    print("fake gcloud: the TPU does not exist (create it first)", file=sys.stderr)
    return 1
  if verb == "scp":
    src, dst = positional
    dst_path = dst.split(":", 1)[1]
    for w in workers:
      shutil.copy(src, os.path.join(w, dst_path))
    return 0
  if verb == "ssh":
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    shims = os.environ["FAKE_WORKER_SHIMS"]
    return _run_all([
        (["bash", "-c", opts["command"]], w,
         _cpu_env(PATH=shims + os.pathsep + os.environ["PATH"],
                  JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                  JAX_NUM_PROCESSES=str(len(workers)), JAX_PROCESS_ID=str(i)))
        for i, w in enumerate(workers)])
  print(f"fake gcloud: unsupported verb {verb}", file=sys.stderr)
  return 2


def srun(args: list[str]) -> int:
  k = next(i for i, a in enumerate(args) if not a.startswith("--"))
  opts, command = _options(args[:k])[0], args[k:]
  nodes, per_node = int(opts.get("nodes", 1)), int(opts.get("ntasks-per-node", 1))
  tasks, job = nodes * per_node, str(random.randrange(1, 1 << 20))
  return _run_all([
      (command, os.getcwd(),
       _cpu_env(SLURM_JOB_ID=job, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS=str(tasks),
                SLURM_PROCID=str(i), SLURM_LOCALID=str(i % per_node),
                SLURM_STEP_NUM_NODES=str(nodes), SLURM_NODEID=str(i // per_node)))
      for i in range(tasks)])


def python3(args: list[str]) -> int:
  if args[:2] == ["-m", "pip"]:
    return 0
  if args[:2] == ["-m", "launch.main"] and os.environ.get("FAKE_GCS_ROOT"):
    args = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_launch.py"), *args[2:]]
  os.execv(sys.executable, [sys.executable, *args])


if __name__ == "__main__":
  tool, rest = os.path.basename(sys.argv[1]), sys.argv[2:]
  _log(tool, rest)
  sys.exit({"gcloud": gcloud, "srun": srun, "python3": python3, "python": python3}[tool](rest))
