"""Atomic directory writes: build in a temp dir beside the target, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_dir(dst: str, overwrite: bool = True):
  """Yields a fresh temp dir; on success it becomes `dst`, on any error it is removed.

  The temp dir sits beside `dst` (same filesystem), so the final step is a rename: a reader
  never sees a half-written `dst`. An existing `dst` is replaced only after the new one is
  complete (``overwrite=True``) or is an error (``overwrite=False``).
  """
  dst = os.path.abspath(dst)
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} already exists (pass overwrite=True to replace it)")
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
  try:
    yield tmp
    _default_permissions(tmp)
    if os.path.exists(dst):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=parent)
      os.rename(dst, os.path.join(old, "x"))
      os.rename(tmp, dst)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _default_permissions(folder: str) -> None:
  """mkdtemp makes 0700 dirs (and some writers 0600 files); give them the umask's defaults."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(folder, 0o777 & ~umask)
  for root, dirs, files in os.walk(folder):
    for d in dirs:
      os.chmod(os.path.join(root, d), 0o777 & ~umask)
    for f in files:
      os.chmod(os.path.join(root, f), 0o666 & ~umask)
