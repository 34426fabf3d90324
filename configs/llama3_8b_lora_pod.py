"""A Llama-3-8B-class backbone with LoRA on a TPU pod slice (documented and compile-checked; not
run in this repository's CI).

Point `model.init` and `tokenizer.path` at an HF folder of the weights (a local copy on every
worker; GCS FUSE works). The mesh shards parameters and optimizer state over all chips (fsdp) and
the batch over the same axis; `--stages=compile` lowers both train steps for this mesh without
weights and checks them against `compile.hbm_gib` per device.

  launch/tpu_pod.sh --tpu=my-v5p-64 --zone=us-east5-a -- \
      --config=configs/llama3_8b_lora_pod.py --workdir=/mnt/my-bucket/rosepo/lastfm_8b
(the workdir: a path every worker sees, e.g. a GCS FUSE mount of the bucket)
"""

import ml_collections

from configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.update(common.lastfm_data())
  c.tokenizer = ml_collections.ConfigDict(dict(
      kind="pretrained", vocab_size=0, path="/mnt/models/Meta-Llama-3-8B-Instruct",
      title_tokens=False, item_slots=False))
  c.update(common.training(steps_sft=2000, steps_preference=1000))
  c.model.update(init="/mnt/models/Meta-Llama-3-8B-Instruct", preset="llama3_8b",
                 dtype="bfloat16", param_dtype="bfloat16", remat=True, lora_rank=16,
                 lora_alpha=32.0)
  c.model.overrides = {}
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.vocab_chunk = 16384
  c.methods = ("sft", "dpo", "sdpo", "rosepo")
  c.sft.update(batch_size=64, eval_examples=512)
  c.sft.optim.update(learning_rate=1e-4, warmup_steps=100)
  c.preference.update(batch_size=64, reference="online")  # LoRA: the frozen base is pi_ref
  c.preference.optim.update(learning_rate=2e-5, warmup_steps=50)
  c.negatives.batch_size = 128
  c.eval.batch_size = 128
  c.compile = ml_collections.ConfigDict(dict(hbm_gib=95.0, seq_len=1024))  # v5p: 95 GiB/chip
  return c
