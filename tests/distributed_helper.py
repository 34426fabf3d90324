"""One process of a multi-process CPU job: 3 sharded DPO steps with orbax checkpoints.

  python tests/distributed_helper.py PROCESS_ID NUM_PROCESSES PORT WORKDIR

The mesh has 2 CPU devices (fsdp=2: parameters and optimizer state sharded across the processes,
the batch too); each process feeds its rows of the global batch. (With several CPU devices per
process the run is the same; one keeps the test fast.) Process 0 writes WORKDIR/params.npz (the final
parameters, gathered) for the test to compare with a 1-process run of the same global batches.
"""

import os
import sys

process_id, num_processes, port, workdir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                            sys.argv[4])
# 2 devices in all: one per process, or both in the single process of the reference run.
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={2 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")
if num_processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=num_processes, process_id=process_id)

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

from rosepo_jax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import model as M  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import sharding as S  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import train as T  # pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax.data import batching as B  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_helper  # pylint: disable=g-import-not-at-top,wrong-import-position

GLOBAL_BATCH, STEPS = 8, 3


def main():
  data = train_helper.rows(32, seed=5, responses=2)
  rs = np.random.RandomState(0)
  ref = -rs.uniform(5.0, 30.0, (len(data), 2)).astype(np.float32)
  sampler = B.StepSampler(len(data), GLOBAL_BATCH, seed=3, process_index=jax.process_index(),
                          process_count=jax.process_count())
  shape = B.BatchShape(seq_multiple=32)

  def batch_fn(step):
    local = sampler.local_indices(step)
    batch = B.make_batch([data[i] for i in local], shape, 2,
                         bucket_rows=[data[i] for i in sampler.global_indices(step)])
    batch["ref_logps"] = ref[local]
    batch["eps"] = np.zeros((len(local), 1), np.float32)
    return batch

  mesh = S.make_mesh(data=1, fsdp=2)
  trainer = T.Trainer(M.init_model(M.get_config("tiny"), seed=2),
                      T.preference_loss_fn(losses.dpo, 1, 1.0, 64),
                      T.make_optimizer(T.OptimConfig(learning_rate=1e-2, warmup_steps=1), STEPS),
                      mesh=mesh)
  cfg = T.LoopConfig(num_steps=STEPS, log_every=1, checkpoint_every=STEPS, progress=False)
  state, _ = T.train_loop(trainer, batch_fn, cfg, workdir)
  flat = {"/".join(map(str, k)): v.get_value() for k, v in state.params.flat_state()}
  gathered = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
              for k, v in flat.items()}
  if jax.process_index() == 0:
    np.savez(os.path.join(workdir, "params.npz"), **gathered)
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.device_count()} devices, "
        f"mesh {dict(mesh.shape)}, step {state.step}", flush=True)


if __name__ == "__main__":
  main()
