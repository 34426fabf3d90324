"""How the launchers end on an input error: one line on stderr, exit code 2."""

import os
import sys

from absl import flags

from rosepo_jax.errors import InputError


def run_main(main):
  """`main` wrapped for `absl.app.run`: an `InputError` prints as ``error: <message>`` and exits
  with code 2, without a traceback, unless ``--verbosity >= 1`` or ROSEPO_TRACEBACK=1. Any other
  exception propagates with its traceback (a bug, not an input)."""
  def wrapped(argv):
    try:
      return main(argv)
    except InputError as e:
      if flags.FLAGS.verbosity >= 1 or os.environ.get("ROSEPO_TRACEBACK") == "1":
        raise
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  return wrapped
