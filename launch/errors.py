"""How the launchers end on an error: an input error prints one line on stderr and exits with
code 2; in a multi-process job any error ends this process at once, so that the others fail at
their next collective instead of waiting for it.

The command line itself is checked the same way (`parse_flags`, absl's `flags_parser`): an
unknown flag, a value of the wrong type, a --config file that is missing or raises, and a
--config.a.b=value override of a key the config does not have each print one line naming the
flag, and exit with code 2.
"""

import difflib
import os
import runpy
import sys
import traceback

from absl import flags
import jax

from rosepo_jax.errors import InputError


class UsageError(InputError, ValueError):
  """A command-line flag with a value the launcher cannot use."""


def _exit(code: int) -> None:
  """Exits; a process of a multi-process job skips JAX's shutdown barrier, where it would wait
  minutes for processes that are themselves waiting for it."""
  sys.stdout.flush()
  sys.stderr.flush()
  if jax.process_count() > 1:
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _where() -> str:
  """" (process i of n)" in a multi-process job, else ""."""
  n = jax.process_count()
  return f" (process {jax.process_index()} of {n})" if n > 1 else ""


def run_main(main):
  """`main` wrapped for `absl.app.run`: an `InputError` prints as ``error: <message>`` and exits
  with code 2, without a traceback, unless ``--verbosity >= 1`` or ROSEPO_TRACEBACK=1. Any other
  exception propagates with its traceback (a bug, not an input); in a multi-process job it is
  printed (with the process id) and the process exits with code 1 at once."""
  def wrapped(argv):
    try:
      return main(argv)
    except InputError as e:
      where = _where()
      if flags.FLAGS.verbosity >= 1 or os.environ.get("ROSEPO_TRACEBACK") == "1":
        traceback.print_exc()
      print(f"error{where}: {e}", file=sys.stderr, flush=True)
      _exit(2)
    except Exception:  # pylint: disable=broad-except
      if jax.process_count() == 1:
        raise
      traceback.print_exc()
      print(f"error{_where()}: the job stops", file=sys.stderr, flush=True)
      _exit(1)
  return wrapped


def _config_file(argv) -> str | None:
  """The value of --config in `argv`, if given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_problem(path: str) -> tuple[str, object]:
  """(what is wrong with config file `path`, "" if nothing; its config when it loads)."""
  if not os.path.isfile(path):
    return f"--config={path}: no such file", None
  try:
    return "", runpy.run_path(path)["get_config"]()
  except Exception as e:  # pylint: disable=broad-except  (the user's file raised)
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    where = f" (line {frames[-1].lineno})" if frames else ""
    what = "defines no get_config()" if isinstance(e, KeyError) and e.args == ("get_config",) \
        else f"raised {type(e).__name__}: {e}"
    return f"--config={path}: loading it {what}{where}", None


def _override_problem(argv, config) -> str:
  """What is wrong with the first --config.a.b=value of `argv` that names no key of `config`."""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    dotted = arg[len("--config."):].split("=", 1)[0]
    node, seen = config, "config"
    for part in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        takes = f" ({seen} takes {sorted(keys)})" if keys else f" ({seen} is not a section)"
        return f"{arg}: {seen} has no key {part!r}{hint}{takes}"
      node, seen = node[part], f"{seen}.{part}"
  return ""


def _root_cause(e: BaseException) -> BaseException:
  while e.__cause__ or e.__context__:
    e = e.__cause__ or e.__context__
  return e


def parse_flags(argv):
  """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`, with every problem of the
  command line printed as one line `error: ...` and exit code 2."""
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and _config_file(argv) is not None:
      flags.FLAGS.config.keys()  # a config that did not load raises here
    return rest
  except flags.Error as e:
    message = str(e)
  except Exception as e:  # pylint: disable=broad-except  (ml_collections' config flags)
    path = _config_file(argv)
    message, config = _load_problem(path) if path else ("", None)
    if not message and config is not None:
      message = _override_problem(argv, config)
    if not message:
      cause = _root_cause(e)
      message = f"{' '.join(a for a in argv[1:] if a.startswith('--config'))}: " \
          f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)
