"""What the processes of one job agree on: who writes, where they wait, how arrays reach the host.

Every process of a multi-process job (`launch/main.py --distributed`) runs every stage. Files
under the workdir are written by the leader (process 0) alone; the other processes wait at a
`barrier` before they read them. Collective work (train steps, decoding with a sharded model,
orbax saves, `to_host` on a sharded array) is run by every process in the same order.

The barrier is a device collective, so a process that dies makes the others' next barrier or
collective fail within seconds (the launcher then exits them non-zero), never hang. Everything
here is a no-op in a single-process job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from rosepo_jax.errors import InputError


class LeaderInputError(InputError, RuntimeError):
  """Raised on the other processes when the leader stopped on an input error."""


class LeaderError(RuntimeError):
  """Raised on the other processes when the leader stopped on any other error."""


def is_leader() -> bool:
  """Whether this process writes the job's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier `name` (the same names, in the same
  order, on every process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def agree(value: int) -> int:
  """The leader's `value` (an int), on every process: e.g. whether a folder exists, read once."""
  if jax.process_count() == 1:
    return int(value)
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def to_host(x) -> np.ndarray:
  """The whole value of array `x` as numpy, on every process (gathered from the other processes
  when `x` is sharded over devices this process cannot address; then every process must call)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def on_leader(fn: Callable[[], Any], what: str) -> Any:
  """Runs `fn` on the leader alone and returns its result there (None elsewhere). When it raises,
  every process raises: the leader its own error, the others a LeaderInputError (for an input
  error) or a LeaderError naming `what`, so that none waits at a barrier for a leader that
  stopped."""
  if jax.process_count() == 1:
    return fn()
  result, failed = None, 0
  try:
    if is_leader():
      result = fn()
  except InputError:
    failed = 1
    raise
  except BaseException:
    failed = 2
    raise
  finally:
    failed = agree(failed)
  if failed == 1:
    raise LeaderInputError(f"{what}: process 0 stopped on an input error; see its message")
  if failed == 2:
    raise LeaderError(f"{what}: process 0 failed; see its traceback")
  return result
