"""The file layer: every file under the run folder is read and written through here.

A path is local (a filesystem path) or remote (a URL such as gs://bucket/run, handled by
`etils.epath`, the layer TFDS and orbax use; gs:// needs the `gcs` extra, i.e. gcsfs). Callers
pass strings; URLs are never made absolute or normalised as filesystem paths.

Writes are atomic: a file is written beside its destination and renamed into place (local), or
uploaded as one object, which GCS makes visible only when complete (remote). Remote storage has
no append: `append_text` rewrites the object.

orbax and tensorboardX open storage themselves (`native` gives them the path). Libraries that
take only local files (a tokenizer's `save_pretrained` and `from_pretrained`, safetensors,
array_record, TFDS's array_record reader) get a local stand-in:
  `local_output(path)`  a local path to write a file or folder to; published to `path` on success;
  `local_copy(path)`    a local copy of a file or folder for reading, removed afterwards;
  `local_mirror(path)`  a local copy that lasts as long as the process (open data sources).
For a local `path`, `local_copy` and `local_mirror` give `path` itself, so local runs copy nothing.

Every process may call any of these; which process writes is the caller's choice (the workdir's
helpers write on the leader, `rosepo_jax.workdir`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

_MIRRORS: list[str] = []  # local_mirror's temp folders, removed when the process exits


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (gs://, s3://, ...) rather than a filesystem path."""
  return "://" in os.fspath(path)


def _p(path: str | os.PathLike) -> epath.Path:
  return epath.Path(os.fspath(path))


def join(path: str, *parts: str) -> str:
  """`os.path.join` for local paths; "/"-joined for URLs."""
  return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def absolute(path: str) -> str:
  """The absolute form of a local path; a URL unchanged."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def native(path: str) -> str:
  """`path` as given to a library that opens storage itself, gs:// included (orbax through
  tensorstore, tensorboardX): absolute when local, a URL unchanged."""
  return absolute(path)


def exists(path: str) -> bool:
  return _p(path).exists()


def isfile(path: str) -> bool:
  return _p(path).is_file()


def isdir(path: str) -> bool:
  return _p(path).is_dir()


def listdir(path: str) -> list[str]:
  """The names in folder `path`, sorted."""
  return sorted(p.name for p in _p(path).iterdir())


def tree(path: str) -> list[str]:
  """The files under folder `path` (links included, never followed), as sorted "/"-separated
  paths relative to it; [] for a missing or empty folder."""
  if is_remote(path):  # one listing per folder (no "**" globs on GCS)
    if not isdir(path):
      return []
    out = []
    for name in listdir(path):
      child = join(path, name)
      out += [f"{name}/{sub}" for sub in tree(child)] if isdir(child) else [name]
    return sorted(out)
  out = []
  for root, dirs, names in os.walk(path):
    names = names + [d for d in dirs if os.path.islink(os.path.join(root, d))]
    for name in names:
      out.append(os.path.relpath(os.path.join(root, name), path).replace(os.sep, "/"))
  return sorted(out)


def relative(path: str, root: str) -> str:
  """`path` (inside folder `root`) relative to it, "/"-separated."""
  if is_remote(root):
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
      raise ValueError(f"{path} is not inside {root}")
    return path[len(prefix):]
  rel = os.path.relpath(path, root)
  if rel == os.pardir or rel.startswith(os.pardir + os.sep):
    raise ValueError(f"{path} is not inside {root}")
  return rel.replace(os.sep, "/")


def makedirs(path: str) -> None:
  _p(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path: str) -> bytes:
  return _p(path).read_bytes()


def read_text(path: str) -> str:
  return _p(path).read_text(encoding="utf-8")


def parent(path: str) -> str:
  """The folder holding `path`."""
  return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def write_bytes(path: str, data: bytes) -> None:
  """Writes the file `path` atomically (its folder is created)."""
  parent_dir = parent(path)
  if parent_dir:
    makedirs(parent_dir)
  if is_remote(path):
    _p(path).write_bytes(data)
    return
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_text(path: str, text: str) -> None:
  """Appends `text` to the file `path` (created if missing). Remote: the object is rewritten."""
  if is_remote(path):
    write_bytes(path, (read_bytes(path) if exists(path) else b"") + text.encode("utf-8"))
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)


def remove(path: str) -> None:
  """Removes a file or a folder with everything in it; nothing when `path` does not exist."""
  p = _p(path)
  if is_remote(path):
    if p.is_dir():
      p.rmtree()
    elif p.exists():
      p.unlink()
  elif os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def rename(src: str, dst: str) -> None:
  """Moves `src` (a file or folder) to `dst`, which must not exist (its folder is created).
  Local: one atomic rename; remote: a copy of each object, then the source's removal."""
  makedirs(parent(dst))
  _p(src).rename(_p(dst))


def copy(src: str, dst: str) -> None:
  """Copies the file or folder `src` to `dst` (replacing a file; merged into a folder); either
  may be local or remote. Files are streamed (16 MiB at a time locally), never held whole."""
  if isdir(src):
    for name in listdir(src):
      copy(join(src, name), join(dst, name))
    makedirs(dst)
    return
  if is_remote(dst):  # the object appears when its upload completes
    _p(src).copy(_p(dst), overwrite=True)
    return
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  tmp = dst + ".tmp"
  try:
    with _p(src).open("rb") as reader, open(tmp, "wb") as writer:
      shutil.copyfileobj(reader, writer, 1 << 24)
    os.replace(tmp, dst)
  finally:
    remove(tmp)


@contextlib.contextmanager
def local_output(path: str) -> Iterator[str]:
  """Yields a local path (free, in no folder yet made) for a writer that needs one; when the
  block succeeds, what was written there (a file or a folder) replaces `path`; on error it is
  dropped and `path` is untouched."""
  if is_remote(path):
    with tempfile.TemporaryDirectory(prefix="rosepo_jax.") as tmp:
      local = os.path.join(tmp, posixpath.basename(path.rstrip("/")))
      yield local
      if os.path.isdir(local):
        remove(path)
      copy(local, path)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  local = path.rstrip("/") + ".tmp"
  remove(local)
  try:
    yield local
    if os.path.isdir(local):
      remove(path)
    os.replace(local, path)
  finally:
    remove(local)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """Yields a local path holding `path`'s file or folder, for a reader that needs one; a remote
  path's copy is removed afterwards. A local path is given as it is."""
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="rosepo_jax.") as tmp:
    local = os.path.join(tmp, posixpath.basename(path.rstrip("/")))
    if exists(path):
      copy(path, local)
    yield local


def local_mirror(path: str) -> str:
  """A local copy of the remote folder `path` (empty when `path` does not exist) that lasts until
  the process exits, for readers that keep files open (TFDS data sources); a local path is
  returned as it is. Every call copies afresh: a folder rewritten since is never read stale."""
  if not is_remote(path):
    return path
  tmp = tempfile.mkdtemp(prefix="rosepo_jax.mirror.")
  if not _MIRRORS:
    atexit.register(lambda: [shutil.rmtree(m, ignore_errors=True) for m in _MIRRORS])
  _MIRRORS.append(tmp)
  local = os.path.join(tmp, posixpath.basename(path.rstrip("/")))
  if exists(path):
    copy(path, local)
  else:
    os.makedirs(local)
  return local
