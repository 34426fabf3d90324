"""The runner: runs the stages' units in pipeline order, skipping those that are up to date.

  data -> sft -> oracle -> negatives -> dpo -> eval -> export -> report
  (`compile`, a check that writes nothing, runs first when named; it is not part of "all")

Units: a stage, or a stage for one run ("dpo/rosepo", "eval/sft"), and with config.seeds, the
units of a per-seed stage once per seed ("seed_1/dpo/rosepo"); each stage module's `STAGE`
says which config keys its units read, which units they consume and what they write
(`rosepo_jax.workdir`). A finished unit writes DIR/stages/<unit>.json holding its key: a hash of
those config keys plus the run ids of its input units. A unit is up to date when its marker is
done with the current key and its inputs are up to date. Otherwise it reruns, after its outputs
are removed (an interrupted unit with an unchanged key resumes from its checkpoints instead);
its new run id makes the units downstream stale in turn. `--force` reruns the named stages.

A unit never runs on (nor is reported up to date over) an input that is missing or stale: when
that input's stage is not among the stages asked for, the command stops before any work with
`StaleInputError` naming the input and the stage to add.

In a multi-process job every process runs every unit (collectives need them all); the leader
alone removes outputs and writes markers, and the processes meet at a barrier after each, so that
all of them read the same markers and files (`rosepo_jax.multihost`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid

from rosepo_jax import config as config_lib
from rosepo_jax import files, multihost
from rosepo_jax.errors import InputError
from rosepo_jax.stages import compile as compile_stage
from rosepo_jax.stages import data, eval as eval_stage, export, negatives, oracle, preference
from rosepo_jax.stages import report, sft
from rosepo_jax.workdir import Context, Stage, Unit, read_json, remove, write_json

STAGES: tuple[Stage, ...] = (data.STAGE, sft.STAGE, oracle.STAGE, negatives.STAGE,
                             preference.STAGE, eval_stage.STAGE, export.STAGE, report.STAGE)
BY_NAME = {s.name: s for s in STAGES}
STAGE_NAMES = tuple(BY_NAME)


class MissingInputError(InputError, FileNotFoundError):
  """A unit's input has never finished and is not among the stages asked for."""


class StaleInputError(InputError, RuntimeError):
  """A unit's input is older than its own inputs or config, and is not among the stages asked for."""


class WorkdirError(InputError, NotADirectoryError):
  """A workdir that cannot be a run folder."""


def read_marker(ctx: Context, unit: Unit) -> dict | None:
  path = ctx.paths.marker(unit)
  return read_json(path) if files.isfile(path) else None


def inputs_of(config: config_lib.Config, unit: Unit) -> list[Unit]:
  """The units `unit` consumes, seeded: a per-seed input of a per-seed unit is its own seed's; of
  a unit over all seeds (the report), every seed's."""
  out = []
  for u in BY_NAME[unit.stage].inputs(config.for_seed(unit.seed), unit):
    if not BY_NAME[u.stage].per_seed:
      out.append(u)
    elif unit.seed is not None:
      out.append(dataclasses.replace(u, seed=unit.seed))
    else:
      out.extend(dataclasses.replace(u, seed=s) for s in config.run_seeds)
  return out


def unit_key(ctx: Context, unit: Unit) -> dict:
  """What a unit's result depends on: its config keys (hashed) and its inputs' run ids."""
  stage, config = BY_NAME[unit.stage], ctx.config.for_seed(unit.seed)
  sections = {s: config_lib.section_value(config, s) for s in stage.sections}
  if stage.key_extra:
    sections["extra"] = stage.key_extra(config, unit)
  blob = json.dumps({"unit": unit.name, "sections": sections}, sort_keys=True, default=str)
  ins = {}
  for u in inputs_of(ctx.config, unit):
    m = read_marker(ctx, u)
    ins[u.name] = m["run_id"] if m and m["status"] == "done" else None
  return {"config": hashlib.sha256(blob.encode()).hexdigest()[:16], "inputs": ins}


def why_stale(ctx: Context, unit: Unit) -> str:
  """"" when `unit` and everything it consumes are up to date, else the reason."""
  marker = read_marker(ctx, unit)
  if not marker or marker["status"] != "done":
    return "has not finished"
  missing = _missing_products(ctx, unit)
  if missing:
    return f"its output {missing[0]} is missing"
  key = unit_key(ctx, unit)
  if marker["key"]["config"] != key["config"]:
    return "its config changed"
  changed = [u for u, run_id in key["inputs"].items() if marker["key"]["inputs"].get(u) != run_id]
  if changed:
    return f"its inputs {changed} ran again since"
  for u in inputs_of(ctx.config, unit):
    reason = why_stale(ctx, u)
    if reason:
      return f"its input {u.name} {reason}"
  return ""


def _missing_products(ctx: Context, unit: Unit) -> list[str]:
  stage, seeded = BY_NAME[unit.stage], ctx.for_seed(unit.seed)
  return [p for p in stage.products(seeded.config, seeded.paths, unit) if not files.exists(p)]


def _check_inputs(ctx: Context, unit: Unit, asked: set[str]) -> None:
  """Stops when an input of `unit` is missing or stale and its stage is not being run."""
  for u in inputs_of(ctx.config, unit):
    if u.stage in asked:
      continue  # it ran (or was found up to date) earlier in this command
    reason = why_stale(ctx, u)
    if reason == "has not finished":
      raise MissingInputError(
          f"{unit.name} needs {u.name}, which has not finished in {ctx.paths.root}; run the "
          f"{u.stage} stage first (add {u.stage} to --stages)")
    if reason:
      raise StaleInputError(
          f"{unit.name} would read {u.name}, which is out of date ({reason}); add {u.stage} to "
          f"--stages (or run --stages=all) so that it reruns first")


def units(config: config_lib.Config, stage: str) -> list[Unit]:
  """The units of `stage`: with config.seeds, a per-seed stage's units once per seed."""
  s = BY_NAME[stage]
  if not s.per_seed:
    return s.units(config)
  return [dataclasses.replace(u, seed=seed) for seed in config.run_seeds
          for u in s.units(config.for_seed(seed))]


def _check_workdir(workdir: str, writes: bool) -> None:
  """A WorkdirError unless `workdir` (a path or a gs:// URL) is a folder this job can write."""
  try:
    if files.exists(workdir) and not files.isdir(workdir):
      raise WorkdirError(f"--workdir={workdir} is a file; expected a folder")
    if writes:
      files.makedirs(workdir)
  except (ImportError, NotImplementedError) as e:  # e.g. gs:// without gcsfs
    raise WorkdirError(f"--workdir={workdir}: {e} (gs:// needs `pip install "
                       "rosepo-jax[gcs]`)") from None
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir}: cannot create it ({e.strerror or e})") from None
  if writes and not files.is_remote(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir={workdir} is not writable by this user")


def run(config, workdir: str, stages, force: bool = False) -> dict:
  """Runs `stages` (names from STAGE_NAMES, "all", or "compile") in pipeline order, skipping
  up-to-date units. `config` is a ConfigDict (parsed and validated here, before any work) or a
  `rosepo_jax.config.Config`. Returns {unit name: "ran" | "up to date"}.
  """
  config = config_lib.parse(config)
  stages = list(STAGE_NAMES) if list(stages) == ["all"] else list(stages)
  unknown = [s for s in stages if s not in STAGE_NAMES + ("compile",)]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGE_NAMES)}, all, or "
                     "compile")
  _check_workdir(workdir, writes=bool(set(stages) - {"compile"}))
  ctx = Context(config, workdir)
  outcome = {}
  if "compile" in stages:
    compile_stage.run(ctx)
    outcome["compile"] = "ran"
  asked = set(stages)
  for stage in STAGES:
    if stage.name not in asked:
      continue
    for unit in units(config, stage.name):
      _check_inputs(ctx, unit, asked)
      key = unit_key(ctx, unit)
      marker = read_marker(ctx, unit)
      missing = _missing_products(ctx, unit) if marker else []
      if (not force and marker and marker["status"] == "done" and marker["key"] == key
          and not missing):
        print(f"{unit.name}: up to date (finished {marker['finished']}); skipped", flush=True)
        outcome[unit.name] = "up to date"
        continue
      if missing and marker["status"] == "done":
        print(f"{unit.name}: {missing[0]} is missing; running it again", flush=True)
      seeded = ctx.for_seed(unit.seed)
      if force or (marker and (marker["key"] != key or marker["status"] == "done")):
        remove(stage.outputs(seeded.paths, unit))  # stale results: start clean
      elif marker:
        print(f"{unit.name}: resuming an interrupted run", flush=True)
      write_json(ctx.paths.marker(unit), {"status": "running", "key": key, "run_id": None})
      multihost.barrier(f"{unit.name} start")
      t0 = time.time()
      stage.run(seeded, unit)
      multihost.barrier(f"{unit.name} ran")
      write_json(ctx.paths.marker(unit), {
          "status": "done", "key": key, "run_id": uuid.uuid4().hex,
          "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - t0, 1)})
      multihost.barrier(f"{unit.name} done")
      outcome[unit.name] = "ran"
  return outcome
