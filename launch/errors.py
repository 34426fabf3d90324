"""How the launchers end on an error: an input error prints one line on stderr and exits with
code 2; in a multi-process job any error ends this process at once, so that the others fail at
their next collective instead of waiting for it."""

import os
import sys
import traceback

from absl import flags
import jax

from rosepo_jax.errors import InputError


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
