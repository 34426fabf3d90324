"""The runner: runs the stages' units in pipeline order, skipping those that are up to date.

  data -> sft -> oracle -> negatives -> dpo -> eval -> export -> report
  (`compile`, a check that writes nothing, runs first when named; it is not part of "all")

Units: a stage, or a stage for one run ("dpo/rosepo", "eval/sft"), and with config.seeds, the
units of a per-seed stage once per seed ("seed_1/dpo/rosepo"); each stage module's `STAGE`
says which config keys its units read, which units they consume and what they write
(`rosepo_jax.workdir`). A finished unit's marker, DIR/stages/<unit>.json, holds its key (a hash
of those config keys plus the run ids of its input units) and the files it wrote. A unit is up to
date when its marker is done with the current key and its inputs are up to date. Otherwise it
reruns into its staging folder while its previous outputs stay in place, and they are swapped
for the new ones only when it succeeds (`rosepo_jax.staging`; an interrupted unit with an
unchanged key resumes there from its checkpoints); its new run id makes the units downstream
stale in turn. `--force` reruns the named stages.

Before any stage runs, `run` checks everything it can without the data, in this order: the
config (`rosepo_jax.config`, every key), the stage names, the run folder, then takes the run
folder's lock (`rosepo_jax.runlock`: one launch per folder), finishes a swap cut short, and plans
which units will run. It stops, naming the file or unit, when a unit would read an input that
is missing or stale whose stage is not asked for (`MissingInputError`, `StaleInputError`), or
when a unit that will run would replace a file the project did not write
(`staging.ForeignFilesError`).

In a multi-process job every process runs every unit (collectives need them all); the leader
alone holds the lock, moves outputs and writes markers, and the processes meet at a barrier
after each, so that all of them read the same markers and files (`rosepo_jax.multihost`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import time
import uuid

import jax

from rosepo_jax import config as config_lib
from rosepo_jax import files, multihost, runlock, sharding, staging
from rosepo_jax.errors import InputError
from rosepo_jax.stages import compile as compile_stage
from rosepo_jax.stages import data, eval as eval_stage, export, negatives, oracle, preference
from rosepo_jax.stages import report, sft
from rosepo_jax.workdir import Context, Stage, Unit, read_json

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


class StageNameError(InputError, ValueError):
  """--stages names no stage, or one that does not exist."""


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


def units(config: config_lib.Config, stage: str) -> list[Unit]:
  """The units of `stage`: with config.seeds, a per-seed stage's units once per seed."""
  s = BY_NAME[stage]
  if not s.per_seed:
    return s.units(config)
  return [dataclasses.replace(u, seed=seed) for seed in config.run_seeds
          for u in s.units(config.for_seed(seed))]


def _check_devices(config: config_lib.Config) -> None:
  """The configured mesh fits this job's devices, and every training batch splits evenly over
  its processes and accumulation steps."""
  if jax.device_count() > 1:
    m = config.mesh
    try:
      sharding.make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)
    except ValueError as e:
      raise config_lib.ConfigError(f"config.mesh={dataclasses.asdict(m)}: {e}") from None
  processes = jax.process_count()
  for name in ("sft", "preference"):
    section = getattr(config, name)
    if section.batch_size % (processes * section.accum_steps):
      raise config_lib.ConfigError(
          f"config.{name}.batch_size={section.batch_size}: expected a multiple of {processes} "
          f"processes x config.{name}.accum_steps={section.accum_steps}")


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


def stage_list(stages) -> list[str]:
  """The stage names of `stages` ("all" expanded), or a StageNameError."""
  stages = [s.strip() for s in stages]
  if not stages or not all(stages):
    raise StageNameError(f"--stages={','.join(stages)}: names no stage; expected some of "
                         f"{list(STAGE_NAMES)}, all, or compile")
  if stages == ["all"]:
    return list(STAGE_NAMES)
  unknown = [s for s in stages if s not in STAGE_NAMES + ("compile",)]
  if unknown:
    raise StageNameError(f"--stages: unknown stage(s) {unknown}; expected some of "
                         f"{list(STAGE_NAMES)}, all, or compile")
  return stages


def stage_order(config: config_lib.Config) -> list[Stage]:
  """STAGES in an order where every stage follows those it consumes: the listed order, except
  that a stage moves after a later-listed one it consumes (hybrid item embeddings: sft reads the
  oracle)."""
  needs = {s.name: {u.stage for unit in units(config, s.name) for u in inputs_of(config, unit)}
           - {s.name} for s in STAGES}
  order: list[Stage] = []
  while len(order) < len(STAGES):
    placed = {s.name for s in order}
    order.append(next(s for s in STAGES if s.name not in placed and needs[s.name] <= placed))
  return order


def _check_inputs(ctx: Context, unit: Unit, asked: set[str], will_run: set[str]) -> None:
  """Stops when an input of `unit` is missing or stale, or will be once the units that run
  before it have run, and its stage is not asked for."""
  for u in inputs_of(ctx.config, unit):
    if u.stage in asked:
      continue  # it runs (or is found up to date) earlier in this command
    reason = why_stale(ctx, u)
    if reason == "has not finished":
      raise MissingInputError(
          f"{unit.name} needs {u.name}, which has not finished in {ctx.paths.root}; run the "
          f"{u.stage} stage first (add {u.stage} to --stages)")
    upstream = [v.name for v in inputs_of(ctx.config, u) if v.name in will_run]
    if upstream and not reason:
      reason = f"its input {upstream[0]} runs again in this command"
    if reason:
      raise StaleInputError(
          f"{unit.name} would read {u.name}, which is out of date ({reason}); add {u.stage} to "
          f"--stages (or run --stages=all) so that it reruns first")


@dataclasses.dataclass(frozen=True)
class Step:
  """A unit in the plan: whether it will run, and why (or when it finished)."""
  unit: Unit
  runs: bool
  why: str


def plan(ctx: Context, stages: list[str], force: bool) -> list[Step]:
  """The units of `stages` in pipeline order and whether each will run: forced, not up to date,
  or downstream of a unit that runs. Stops (before any work) on inputs that are missing or
  stale outside `stages`."""
  asked, will_run, out = set(stages), set(), []
  for stage in stage_order(ctx.config):
    if stage.name not in asked:
      continue
    for unit in units(ctx.config, stage.name):
      _check_inputs(ctx, unit, asked, will_run)
      reason = "--force" if force else why_stale(ctx, unit)
      upstream = [u.name for u in inputs_of(ctx.config, unit) if u.name in will_run]
      if not reason and upstream:
        reason = f"its input {upstream[0]} runs again"
      if reason:
        will_run.add(unit.name)
        out.append(Step(unit, True, reason))
      else:
        out.append(Step(unit, False, read_marker(ctx, unit)["finished"]))
  return out


def _outputs(ctx: Context, unit: Unit) -> list[str]:
  return BY_NAME[unit.stage].outputs(ctx.for_seed(unit.seed).paths, unit)


def _run_unit(ctx: Context, unit: Unit, why: str, force: bool) -> None:
  """Runs `unit` into its staging folder and swaps its outputs in (`rosepo_jax.staging`)."""
  seeded = ctx.for_seed(unit.seed)
  outputs = _outputs(ctx, unit)
  key = unit_key(ctx, unit)
  resume = multihost.agree(int(multihost.on_leader(
      lambda: staging.begin(seeded.paths, unit, key, outputs, fresh=force), unit.name) or 0))
  print(f"{unit.name}: resuming an interrupted run" if resume else
        f"{unit.name}: running" + ("" if why == "has not finished" else f" ({why})"), flush=True)
  if unit.stage == "data":
    ctx.forget_data()  # the unit opens the data it builds
  t0 = time.time()
  BY_NAME[unit.stage].run(seeded.staged(staging.redirect(seeded.paths, unit, outputs)), unit)
  multihost.barrier(f"{unit.name} ran")
  multihost.on_leader(lambda: staging.ready(seeded.paths, unit, uuid.uuid4().hex,
                                            time.time() - t0), unit.name)
  multihost.on_leader(lambda: staging.swap(ctx.paths.root, seeded.paths.staging(unit)),
                      unit.name)
  multihost.barrier(f"{unit.name} done")
  if unit.stage == "data":
    ctx.forget_data()  # DIR/data was replaced: open it there afresh


def _finish_pending_swaps(ctx: Context) -> None:
  """Finishes the swaps a killed launch cut short (their units had finished)."""
  def finish():
    for folder in staging.pending(ctx.paths.root):
      print(f"{folder}: finishing the swap of outputs an earlier launch cut short", flush=True)
      staging.swap(ctx.paths.root, folder)
  multihost.on_leader(finish, "finishing cut-short swaps")
  multihost.barrier("pending swaps finished")


@contextlib.contextmanager
def _hold(ctx: Context):
  """Holds the run folder's lock for the block (the leader; every process stops when the leader
  cannot take it)."""
  command = shlex.join([os.path.basename(sys.executable)] + sys.argv)
  with contextlib.ExitStack() as held:
    multihost.on_leader(lambda: held.enter_context(runlock.hold(ctx.paths.lock, command)),
                        f"the lock of {ctx.paths.root}")
    yield


def run(config, workdir: str, stages, force: bool = False) -> dict:
  """Runs `stages` (names from STAGE_NAMES, "all", or "compile") in pipeline order, skipping
  up-to-date units. `config` is a ConfigDict (parsed and validated here, before any work) or a
  `rosepo_jax.config.Config`. Returns {unit name: "ran" | "up to date"}.
  """
  config = config_lib.parse(config)
  stages = stage_list(stages)
  _check_devices(config)
  writes = bool(set(stages) - {"compile"})
  _check_workdir(workdir, writes)
  ctx = Context(config, workdir)
  outcome = {}
  if "compile" in stages:
    compile_stage.run(ctx)
    outcome["compile"] = "ran"
  if not writes:
    return outcome
  with _hold(ctx):
    _finish_pending_swaps(ctx)
    steps = plan(ctx, stages, force)
    running = {step.unit.stage for step in steps if step.runs}
    for stage in STAGES:  # what each stage that runs needs that no config value shows
      if stage.name in running and BY_NAME[stage.name].check:
        BY_NAME[stage.name].check(config)
    for step in steps:  # no unit may replace a file the project did not write
      if step.runs:
        staging.check_owned(step.unit.name, ctx.paths.root, _outputs(ctx, step.unit),
                            read_marker(ctx, step.unit))
    for step in steps:
      if step.runs:
        _run_unit(ctx, step.unit, step.why, force)
        outcome[step.unit.name] = "ran"
      else:
        print(f"{step.unit.name}: up to date (finished {step.why}); skipped", flush=True)
        outcome[step.unit.name] = "up to date"
  return outcome
