r"""The oracle stage's models trained one after another, against `oracle.train_oracles`' threads.

  python benchmarks/oracle_training.py --config=configs/demo.py --workdir=DIR

DIR is a run folder whose data unit has finished. The oracle stage trains the all-users SASRec
and `oracle.folds` fold oracles (each without one fold of the training users), all early-stopped
on validation. This trains those same sets twice in one process, side by side: one model after
another (`oracle.train_oracle`), then `oracle.train_oracles` (one thread per CPU core, or
`--workers`), and prints each way's wall time, the ratio, and each model's epochs and best
validation HitRatio@1 under both (they must agree: the threads train each model exactly as alone).
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import config as config_lib
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.workdir import Context
# pylint: enable=g-import-not-at-top,wrong-import-position

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "A run folder whose data unit has finished.")
flags.DEFINE_integer("workers", 0, "Threads for train_oracles (0: one per CPU core).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  ctx = Context(config_lib.parse(FLAGS.config), FLAGS.workdir)
  ds, cfg = ctx.dataset, ctx.config.oracle
  train, val = ds.examples("train"), ds.examples("val")
  sets, names, _ = oracle_lib.fold_training_sets(train, cfg.folds, cfg.seed)
  quiet = lambda *args: None
  start = time.time()
  alone = [oracle_lib.train_oracle(s, val, ds.num_items, cfg, quiet, name)[1]
           for s, name in zip(sets, names)]
  seconds_alone = time.time() - start
  start = time.time()
  together = [info for _, info in oracle_lib.train_oracles(
      sets, val, ds.num_items, cfg, names, quiet, FLAGS.workers or None)]
  seconds_together = time.time() - start
  print(f"{len(sets)} SASRec models ({ctx.config.data.name}, {len(train)} training rows, "
        f"{os.cpu_count()} CPU cores):")
  for name, a, t in zip(names, alone, together):
    print(f"  {name:8s} epochs {a['epochs']:3d} / {t['epochs']:3d}, best validation "
          f"HitRatio@1 {a['val_hit_ratio@1']:.4f} / {t['val_hit_ratio@1']:.4f} (alone / together)")
  print(f"one after another {seconds_alone:.1f} s; train_oracles {seconds_together:.1f} s; "
        f"ratio {seconds_together / seconds_alone:.2f}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
