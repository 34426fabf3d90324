"""Atomic directory writes that never delete what they did not write.

`atomic_dir(dst)` builds the new folder in a temp dir beside `dst` (same filesystem) and renames it
into place when complete, so a reader never sees a half-written folder. `dst` may be a gs:// URL
(`rosepo_jax.files`): there a rename copies each object, so a reader may see the folder grow while
it is renamed, but never before the new folder is complete. Every folder it writes
holds a marker file (`MARKER`). An existing `dst` is replaced only when it is a folder with that
marker (an earlier output of ours) and `overwrite` is true, or when it is an empty folder.
Refused always, whatever `overwrite` says: a plain file, a folder without the marker, the current
directory or any folder holding it, this repository or any folder holding it, a git checkout, and
any of the `protect` paths (e.g. a conversion's source) or a folder holding one.

In a multi-process job every process enters `atomic_dir` (the same destination, in the same
order): each checks the destination, the leader makes the temp dir and later renames it, and all
wait for each other in between, so that a collective writer (orbax) can write into it from every
process and plain files are written by the leader (`multihost.is_leader`).
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import os

from rosepo_jax import files, multihost
from rosepo_jax.errors import InputError

MARKER = ".rosepo_jax_output"  # present in every folder atomic_dir wrote
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DestinationError(InputError, FileExistsError):
  """A destination that atomic_dir refuses to replace."""


def _holds(folder: str, path: str) -> bool:
  """Whether `path` is `folder` or lies inside it (both real paths)."""
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_destination(dst: str, overwrite: bool, protect: Sequence[str] = ()) -> None:
  """Raises DestinationError unless writing a new folder at `dst` loses nothing of the user's."""
  why = ""
  if files.is_remote(dst):
    for p in protect:
      if p and _holds(dst.rstrip("/"), p):
        why = f"it is (or holds) {p}, which this command reads"
        break
  else:
    real = os.path.realpath(dst)
    if _holds(real, os.path.realpath(os.getcwd())):
      why = "it is (or holds) the current directory"
    elif _holds(real, os.path.realpath(_REPO)) or os.path.exists(os.path.join(real, ".git")):
      why = "it is (or holds) a source repository"
    else:
      for p in protect:
        if p and not files.is_remote(p) and _holds(real, os.path.realpath(p)):
          why = f"it is (or holds) {p}, which this command reads"
          break
    if not why and os.path.islink(dst):
      why = "it is a link, not a folder"
  if not why and files.exists(dst):
    held = files.listdir(dst) if files.isdir(dst) else None
    if held is None:
      why = "it is a file, not a folder"
    elif held and MARKER not in held:
      why = f"it is a folder this project did not write (no {MARKER} marker inside)"
    elif held and not overwrite:
      why = ("it holds an earlier output of ours; pass overwrite=True (launch.convert: "
             "--overwrite) to replace it")
  if why:
    raise DestinationError(f"refusing to write {dst}: {why}; nothing was changed")


@contextlib.contextmanager
def atomic_dir(dst: str, overwrite: bool = True, protect: Sequence[str] = ()):
  """Yields a fresh temp dir (the same on every process); on success it becomes `dst`, on any
  error it is removed.

  `check_destination` decides first whether an existing `dst` may be replaced; it is replaced only
  after the new folder is complete.
  """
  check_destination(dst, overwrite, protect)
  dst = files.absolute(dst).rstrip("/")
  parent, name = os.path.split(dst)  # a URL's "/" too
  # One name for every process; leftovers of an interrupted write are ours to remove.
  tmp, old = files.join(parent, f".{name}.tmp"), files.join(parent, f".{name}.old")
  leader = multihost.is_leader()
  if leader:
    files.remove(tmp)
    files.makedirs(tmp)
  multihost.barrier(f"atomic_dir enter {dst}")
  try:
    yield tmp
    multihost.barrier(f"atomic_dir written {dst}")
    if leader:
      files.write_text(files.join(tmp, MARKER),
                       "written by rosepo-jax; the folder may be replaced by its next output\n")
      if not files.is_remote(tmp):
        _default_permissions(tmp)
      if files.exists(dst):
        files.remove(old)
        files.rename(dst, old)
        files.rename(tmp, dst)
        files.remove(old)
      else:
        files.rename(tmp, dst)
    multihost.barrier(f"atomic_dir done {dst}")
  except BaseException:
    if leader:
      files.remove(tmp)
    raise


def _default_permissions(folder: str) -> None:
  """Some writers make 0600 files (or 0700 dirs); give them the umask's defaults."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(folder, 0o777 & ~umask)
  for root, dirs, names in os.walk(folder):
    for d in dirs:
      os.chmod(os.path.join(root, d), 0o777 & ~umask)
    for f in names:
      os.chmod(os.path.join(root, f), 0o666 & ~umask)
