"""Where a multi-process job's settings come from: flags, else the environment, else JAX."""

from __future__ import annotations

from collections.abc import Mapping
import os

from rosepo_jax.errors import InputError

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def initialize_args(coordinator_address: str | None, num_processes: int | None,
                    process_id: int | None, environ: Mapping[str, str] | None = None) -> dict:
  """`jax.distributed.initialize`'s keyword arguments: each flag's value, else its environment
  variable (`ENV`; jax 0.10 itself reads only the coordinator's), else left out, so that JAX
  detects it (TPU VMs, SLURM, Open MPI). An InputError names a malformed or half-set variable."""
  environ = os.environ if environ is None else environ
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  args: dict = {}
  for name, value in given.items():
    if value is None and environ.get(ENV[name], "") != "":
      value = environ[ENV[name]]
      if name != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise InputError(f"{ENV[name]}={value!r}: expected an integer") from None
    if value is not None:
      args[name] = value
  if ("num_processes" in args) != ("process_id" in args):
    missing = "process_id" if "num_processes" in args else "num_processes"
    raise InputError(f"--distributed: the process count and id go together; set --{missing} or "
                     f"{ENV[missing]}")
  if "num_processes" in args:
    if args["num_processes"] < 1 or not 0 <= args["process_id"] < args["num_processes"]:
      raise InputError(f"--distributed: process id {args['process_id']} of "
                       f"{args['num_processes']} processes; expected 0 <= id < count")
    if "coordinator_address" not in args:
      raise InputError("--distributed: with a process count and id, set --coordinator_address "
                       "or JAX_COORDINATOR_ADDRESS (host:port of process 0)")
  return args
