"""`python -m launch.main`, except that the sft stage raises on process 1 of a multi-process job
(for tests/test_multiprocess.py: a failing process must end the whole job).

  python tests/failing_launch.py --distributed --config=configs/tiny.py --workdir=DIR
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from launch import main as launch_main  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch.errors import run_main  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax.stages import sft  # pylint: disable=g-import-not-at-top,wrong-import-position

PLANTED = "planted failure in the sft stage of process 1"


def failing_sft(ctx, unit):
  if jax.process_index() == 1:
    raise RuntimeError(PLANTED)
  return sft.run(ctx, unit)


pipeline.STAGES = tuple(dataclasses.replace(s, run=failing_sft) if s.name == "sft" else s
                        for s in pipeline.STAGES)
pipeline.BY_NAME = {s.name: s for s in pipeline.STAGES}

if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(run_main(launch_main.main))
