"""One launch per run folder: DIR/run.lock names the launch that holds it.

`hold(path, command)` takes the lock before any stage runs and releases it when the block ends
(in a multi-process job the leader holds it for the whole job; `rosepo_jax.pipeline`). A second
launch on the same folder is refused with a `LockError` naming the holder: its host, pid, start
time and command. A lock whose holder is gone is taken over, with a message saying whose it was.

How "gone" is known:
  local folder: an exclusive `flock` on DIR/run.lock, which the kernel drops when the holding
    process ends, however it ends (SIGKILL included). A holder on another host of a shared
    filesystem whose flock does not reach across hosts is caught by its heartbeat (below).
  gs:// (no file locks): the holder rewrites the lock every HEARTBEAT_S seconds; a lock not
    rewritten for STALE_S seconds is gone. A launch writes its lock, waits, and reads it back:
    of two launches that start within that window, the last writer keeps it and the other
    stops. Best effort: GCS has no compare-and-swap through this file layer.
The lock file stays when released (it then says "released"): removing it would let a launch
that opened the old file and one that makes a new one both hold a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from rosepo_jax import files
from rosepo_jax.errors import InputError

HEARTBEAT_S = 30.0
STALE_S = 120.0
_CONFIRM_S = 2.0  # gs://: how long a launch waits before reading its lock back


class LockError(InputError, RuntimeError):
  """The run folder is held by another launch."""


def _holder(command: str, token: str) -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "heartbeat": time.time(),
          "command": command}


def describe(holder: dict) -> str:
  """One line naming a holder."""
  return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
          f"{holder.get('command', '?')}")


def _parse(text: str) -> dict | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _alive_elsewhere(holder: dict | None) -> bool:
  """Whether `holder` (read from a lock we could flock) runs on another host and beats."""
  return bool(holder and not holder.get("released") and holder.get("host") != socket.gethostname()
              and time.time() - float(holder.get("heartbeat", 0)) < STALE_S)


def _refuse(path: str, holder: dict | None) -> LockError:
  who = describe(holder) if holder else "a launch whose record is unreadable"
  return LockError(f"{files.parent(path)} is in use by another launch ({who}); wait for it "
                   f"to end or stop it, or use another --workdir (lock: {path})")


class _Local:
  """A flock on a local (or shared) lock file."""

  def __init__(self, path: str, command: str):
    self.path, self.holder = path, _holder(command, uuid.uuid4().hex)
    self.fd = -1

  def acquire(self) -> str:
    files.makedirs(files.parent(self.path))
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      previous = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
      os.close(fd)
      raise _refuse(self.path, previous) from None
    previous = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
    if _alive_elsewhere(previous):
      os.close(fd)
      raise _refuse(self.path, previous)
    self.fd = fd
    self._write(self.holder)
    if previous and not previous.get("released"):
      return f"took over the lock of {describe(previous)}, which is gone"
    return ""

  def _write(self, holder: dict) -> None:
    data = json.dumps(holder).encode("utf-8")
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, data, 0)
    os.fsync(self.fd)

  def beat(self) -> None:
    self.holder["heartbeat"] = time.time()
    self._write(self.holder)

  def release(self) -> None:
    self._write({**self.holder, "released": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.close(self.fd)  # drops the flock
    self.fd = -1


class _Remote:
  """A heartbeat object on remote storage (gs://)."""

  def __init__(self, path: str, command: str):
    self.path, self.holder = path, _holder(command, uuid.uuid4().hex)

  def _read(self) -> dict | None:
    return _parse(files.read_text(self.path)) if files.isfile(self.path) else None

  def acquire(self) -> str:
    previous = self._read()
    if previous and not previous.get("released") and (
        time.time() - float(previous.get("heartbeat", 0)) < STALE_S):
      raise _refuse(self.path, previous)
    files.write_text(self.path, json.dumps(self.holder))
    time.sleep(_CONFIRM_S)
    now = self._read()
    if not now or now.get("token") != self.holder["token"]:
      raise _refuse(self.path, now)
    if previous and not previous.get("released"):
      return f"took over the lock of {describe(previous)}, which is gone"
    return ""

  def beat(self) -> None:
    self.holder["heartbeat"] = time.time()
    files.write_text(self.path, json.dumps(self.holder))

  def release(self) -> None:
    files.write_text(self.path, json.dumps(
        {**self.holder, "released": time.strftime("%Y-%m-%d %H:%M:%S")}))


@contextlib.contextmanager
def hold(path: str, command: str):
  """Holds the lock at `path` for the block (a LockError when another launch holds it); a
  thread refreshes its heartbeat every HEARTBEAT_S seconds."""
  lock = (_Remote if files.is_remote(path) else _Local)(path, command)
  message = lock.acquire()
  if message:
    print(f"{files.parent(path)}: {message}", flush=True)
  stop = threading.Event()

  def beat():
    while not stop.wait(HEARTBEAT_S):
      try:
        lock.beat()
      except OSError:
        pass  # a missed beat; the next one retries

  thread = threading.Thread(target=beat, name="run.lock heartbeat", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    lock.release()
