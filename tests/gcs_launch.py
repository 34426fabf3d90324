"""`python -m launch.main`, with gs:// URLs going to a fake bucket kept in the folder
$FAKE_GCS_ROOT (`fake_gcs`), so that every process of a multi-process job sees the same bucket
(for tests/test_multiprocess.py: a whole job on a gs:// workdir).

  FAKE_GCS_ROOT=DIR python tests/gcs_launch.py --distributed --config=configs/tiny.py \
      --workdir=gs://bucket/run
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fake_gcs
sys.path.insert(0, os.getcwd())  # the checkout it runs in, as `python -m launch.main` would

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

import fake_gcs  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch import main as launch_main  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch.errors import run_main  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  fake_gcs.install(pytest.MonkeyPatch(), os.environ["FAKE_GCS_ROOT"], native=True)
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(run_main(launch_main.main))
