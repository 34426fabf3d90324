r"""The one launcher: runs pipeline stages for a config.

  python -m launch.main --config=configs/demo.py --workdir=/tmp/demo --stages=data
  python -m launch.main --config=configs/lastfm.py --config.data.seed=1 --workdir=DIR --stages=data
"""

from absl import app, flags
from absl import logging
import jax
from ml_collections import config_flags

from launch import distributed
from launch.errors import parse_flags, run_main
from rosepo_jax import pipeline

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: every stage writes under it.")
flags.DEFINE_list("stages", ["all"], "Stages to run, in pipeline order (or: all): data, sft, "
                  "oracle, negatives, dpo, eval, export, report. Up-to-date stages are skipped. "
                  "--stages=compile only compiles the train steps and prints their memory.")
flags.DEFINE_bool("force", False, "Rerun the given stages even when up to date (what depends on "
                  "them becomes stale and reruns too).")
flags.DEFINE_bool("distributed", False, "Multi-process job: join it (jax.distributed.initialize) "
                  "before anything else. The coordinator, process count and id come from the "
                  "flags below, else from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                  "JAX_PROCESS_ID, else JAX detects them (TPU VMs, SLURM, Open MPI).")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "With --distributed: processes in the job.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's id, 0..N-1.")
flags.DEFINE_integer("heartbeat_timeout_s", 100, "With --distributed: a process silent this long "
                     "(killed, host lost) ends the job; an error in a process ends it at once.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.distributed:
    args = distributed.initialize_args(FLAGS.coordinator_address, FLAGS.num_processes,
                                       FLAGS.process_id)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes: collectives
    jax.distributed.initialize(**args, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO; -v 0 shows them
  pipeline.run(FLAGS.config, FLAGS.workdir, FLAGS.stages, force=FLAGS.force)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(run_main(main), flags_parser=parse_flags)
