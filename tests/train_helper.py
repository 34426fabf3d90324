"""A tiny deterministic SFT run, used by the tests in-process and as a subprocess (resume test).

  python tests/train_helper.py WORKDIR NUM_STEPS OUT.npz
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rosepo_jax import model as M  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import train as T  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax.data import batching as B  # pylint: disable=g-import-not-at-top,wrong-import-position


def rows(n=24, seed=0, responses=1):
  rs = np.random.RandomState(seed)
  return [B.EncodedRow(tuple(rs.randint(3, 256, rs.randint(5, 20)).tolist()),
                       tuple(tuple(rs.randint(3, 256, rs.randint(1, 4)).tolist()) + (2,)
                             for _ in range(responses))) for _ in range(n)]


def run(workdir, num_steps, log_path=None, batch_flops=None):
  data = rows()
  sampler = B.StepSampler(len(data), global_batch=4, seed=7)
  shape = B.BatchShape(seq_multiple=32)

  def batch_fn(step):
    idx = sampler.global_indices(step)
    if log_path:
      with open(log_path, "a") as f:
        f.write(json.dumps({"step": step, "indices": idx.tolist()}) + "\n")
    return B.make_batch([data[i] for i in idx], shape, 1)

  trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=1), T.sft_loss_fn(64),
                      T.make_optimizer(T.OptimConfig(learning_rate=1e-3, warmup_steps=2), 6))
  cfg = T.LoopConfig(num_steps=num_steps, log_every=1, checkpoint_every=1, progress=False)
  state, _ = T.train_loop(trainer, batch_fn, cfg, workdir, batch_flops=batch_flops)
  return state


if __name__ == "__main__":
  final = run(sys.argv[1], int(sys.argv[2]), log_path=sys.argv[3] + ".order.jsonl")
  np.savez(sys.argv[3], **{"/".join(map(str, k)): np.asarray(v.get_value())
                           for k, v in final.params.flat_state()})
