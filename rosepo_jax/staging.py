"""A unit's outputs are replaced only when their replacement is ready, and never over a user's file.

A unit that runs writes every output into its staging folder, DIR/.staging/<unit>/new/ (the
same relative paths as in DIR: `Paths.staged` redirects them), while its previous outputs and
marker stay as they are. When the unit succeeds, the runner records what it wrote (`ready`) and
swaps the new outputs in (`swap`): each previous output moves to DIR/.staging/<unit>/old/, each
new one moves into place, the unit's marker is written with the list of the files it owns, and
the staging folder goes. A failure or a kill before `ready` leaves the previous outputs and
marker as they were; a swap cut short is finished by the next launch (`pending`), before
anything reads the run folder.

DIR/.staging/<unit>/state.json: {"status": "running" | "ready", "key", "outputs" (every output
path of the unit, relative to DIR), "marker" (the marker's path relative to DIR)}; once "ready"
also "run_id", "finished", "seconds", "produced" (the outputs the unit wrote) and "files" (every
file under them). A running unit interrupted with an unchanged key resumes in its staging
folder, where its checkpoints are.

Foreign files: a unit's marker lists the files it wrote ("files", relative to DIR). A file under
one of the unit's outputs that its marker does not list was put there by someone else: the
runner stops before any work (`check_owned`), naming it, and never removes it. A marker written
before markers listed files (no "files") owns whatever is under its outputs.

`begin`, `ready` and `swap` write: in a multi-process job the runner calls them on the leader
alone (`multihost.on_leader`), then the processes meet at a barrier.
"""

from __future__ import annotations

import time

from rosepo_jax import files
from rosepo_jax.errors import InputError
from rosepo_jax.workdir import STAGING, Paths, Unit, read_json, write_json

STATE = "state.json"


class ForeignFilesError(InputError, FileExistsError):
  """A file the project did not write lies where a unit would replace its outputs."""


def owned_files(root: str, outputs: list[str]) -> list[str]:
  """Every file under `outputs` (files or folders under `root`), relative to `root`."""
  out = []
  for path in outputs:
    rel = files.relative(path, root)
    if files.isdir(path):
      out += [f"{rel}/{name}" for name in files.tree(path)]
    elif files.exists(path):
      out.append(rel)
  return sorted(out)


def check_owned(name: str, root: str, outputs: list[str], marker: dict | None,
                also: tuple[str, ...] | list[str] = ()) -> None:
  """Raises ForeignFilesError when a file under `outputs` is neither listed by unit `name`'s
  `marker` (None: the unit never finished) nor in `also` (files a cut-short swap moved in)."""
  if marker is not None and "files" not in marker:
    return  # a marker from before markers listed files: what is there is the unit's
  known = set(marker["files"] if marker else ()) | set(also)
  foreign = [f for f in owned_files(root, outputs) if f not in known]
  if foreign:
    more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
    top = next(p for p in outputs if foreign[0] == files.relative(p, root)
               or foreign[0].startswith(files.relative(p, root) + "/"))
    raise ForeignFilesError(
        f"{files.join(root, foreign[0])}{more}: a file rosepo-jax did not write, among the "
        f"outputs of {name}, which this command would replace; nothing was changed. Move it out "
        f"of {top} (or use another --workdir) and relaunch")


def redirect(paths: Paths, unit: Unit, outputs: list[str]) -> dict[str, str]:
  """{output: its place in the unit's staging folder}."""
  new = files.join(paths.staging(unit), "new")
  return {p: files.join(new, files.relative(p, paths.root)) for p in outputs}


def _state_path(staging: str) -> str:
  return files.join(staging, STATE)


def read_state(staging: str) -> dict | None:
  """The state of staging folder `staging`, or None."""
  path = _state_path(staging)
  return read_json(path) if files.isfile(path) else None


def begin(paths: Paths, unit: Unit, key: dict, outputs: list[str], fresh: bool) -> bool:
  """Prepares the unit's staging folder; returns whether it resumes an interrupted run (a
  running state with the same `key`, unless `fresh`). Otherwise a leftover staging folder (the
  runner's own) is removed first."""
  staging = paths.staging(unit)
  state = read_state(staging)
  resume = bool(state and state["status"] == "running" and state["key"] == key and not fresh)
  if not resume:
    files.remove(staging)
  write_json(_state_path(staging), {
      "status": "running", "key": key, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
      "outputs": [files.relative(p, paths.root) for p in outputs],
      "marker": files.relative(paths.marker(unit), paths.root)})
  return resume


def ready(paths: Paths, unit: Unit, run_id: str, seconds: float) -> None:
  """Records that the unit finished and what it wrote: from here on its new outputs win."""
  staging = paths.staging(unit)
  state = read_state(staging)
  new = files.join(staging, "new")
  produced = [rel for rel in state["outputs"] if files.exists(files.join(new, rel))]
  state.update(status="ready", run_id=run_id, finished=time.strftime("%Y-%m-%d %H:%M:%S"),
               seconds=round(seconds, 1), produced=produced,
               files=owned_files(new, [files.join(new, rel) for rel in produced]))
  write_json(_state_path(staging), state)


def swap(root: str, staging: str) -> None:
  """Moves the ready outputs of staging folder `staging` into the run folder `root` and writes
  the unit's marker; idempotent, so that a swap cut short is finished by running it again.
  Previous outputs go to the staging folder's old/ and are removed with it. Stops with a
  ForeignFilesError, moving nothing, when a previous output holds a file the unit did not write
  (put there while the unit ran): the new outputs wait, and the next launch swaps them in."""
  state = read_state(staging)
  assert state and state["status"] == "ready", (staging, state)
  name = files.relative(staging, files.join(root, STAGING))
  marker_path = files.join(root, state["marker"])
  old_marker = read_json(marker_path) if files.isfile(marker_path) else None
  outputs = [files.join(root, rel) for rel in state["outputs"]]
  check_owned(name, root, outputs, old_marker, also=state["files"])
  produced = set(state["produced"])
  for rel in state["outputs"]:
    path = files.join(root, rel)
    new, old = files.join(staging, "new", rel), files.join(staging, "old", rel)
    if rel in produced and not files.exists(new):
      continue  # moved in by the swap that was cut short
    if files.exists(path):
      files.remove(old)
      files.rename(path, old)
    if rel in produced:
      files.rename(new, path)
  write_json(marker_path, {"status": "done", "key": state["key"], "run_id": state["run_id"],
                           "finished": state["finished"], "seconds": state["seconds"],
                           "files": state["files"]})
  files.remove(staging)
  if not files.listdir(files.parent(staging)):
    files.remove(files.parent(staging))  # DIR/.staging, empty


def pending(root: str) -> list[str]:
  """The staging folders under run folder `root` whose unit finished but was not swapped in."""
  base = files.join(root, STAGING)
  if not files.isdir(base):
    return []
  out = []
  for name in files.listdir(base):
    state = read_state(files.join(base, name))
    if state and state.get("status") == "ready":
      out.append(files.join(base, name))
  return out
