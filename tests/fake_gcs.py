"""A gs:// bucket backed by a local folder, for tests of `rosepo_jax.files` and of whole runs.

`install(monkeypatch, root)` routes epath's gs:// paths to an fsspec filesystem that stores
gs://BUCKET/KEY as root/BUCKET/KEY, so every gs:// path our code opens goes through epath's
fsspec backend exactly as with gcsfs; with `native=True` the libraries that open storage
themselves (orbax through tensorstore, tensorboardX) get the local path of the same object
(`files.native`), since they cannot reach this bucket.
"""

import os

from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem

from rosepo_jax import files


def _filesystem(root: str) -> LocalFileSystem:
  class FakeGCS(LocalFileSystem):
    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      if path.startswith("gs://"):
        path = os.path.join(root, path[len("gs://"):])
      return LocalFileSystem._strip_protocol(path)

  return FakeGCS(auto_mkdir=True)  # like GCS: writing an object needs no folder first


def local_path(root: str, url: str) -> str:
  """Where the fake bucket keeps `url`."""
  return os.path.join(root, url[len("gs://"):])


def install(monkeypatch, root: str, native: bool = False) -> None:
  fake = _filesystem(str(root))
  real_fs = epath_backend._FileSystemSpecBackend.fs  # pylint: disable=protected-access
  monkeypatch.setattr(
      epath_backend._FileSystemSpecBackend, "fs",  # pylint: disable=protected-access
      lambda self, path: fake if os.fspath(path).startswith("gs://") else real_fs(self, path))
  if native:
    real_native = files.native
    monkeypatch.setattr(files, "native", lambda path: local_path(str(root), path)
                        if path.startswith("gs://") else real_native(path))
