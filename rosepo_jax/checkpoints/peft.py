"""LoRA adapters as a PEFT folder: `adapter_config.json` and `adapter_model.safetensors`, loadable
with `peft.PeftModel.from_pretrained(base, folder)` on the Hugging Face folder of the model the
adapters were trained on.

Ours: kernel [in, out], lora_a [in, r], lora_b [r, out], delta = (alpha / r) * a @ b. PEFT (torch
Linear weights [out, in]): lora_A.weight [r, in], lora_B.weight [out, r], delta = (alpha / r) *
B @ A; so lora_A = a.T and lora_B = b.T, named after the layer's HF weight under
``base_model.model.``.
"""

from __future__ import annotations

import json

from flax import nnx
import numpy as np

from rosepo_jax import files, multihost
from rosepo_jax.checkpoints import params as P
from rosepo_jax.checkpoints.atomic import atomic_dir
from rosepo_jax.checkpoints.hf import save_safetensors
from rosepo_jax.model import Decoder

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def adapter_tensors(model: Decoder) -> dict[str, np.ndarray]:
  """PEFT's tensors [r, in] / [out, r] (float32) of every LoRA adapter of `model`."""
  flat = dict(nnx.state(model, nnx.Param).flat_state())
  out = {}
  for name in P.param_names(model.cfg):
    a_path = name.path[:-1] + ("lora_a",)
    if name.path[-1] != "kernel" or a_path not in flat:
      continue
    prefix = "base_model.model." + name.hf[:-len(".weight")]
    for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
      value = multihost.to_host(flat[name.path[:-1] + (ours,)].get_value())
      out[f"{prefix}.{theirs}.weight"] = np.ascontiguousarray(np.asarray(value, np.float32).T)
  return out


def save_adapter(model: Decoder, folder: str, base_model: str = "") -> None:
  """Writes `model`'s adapters as a PEFT folder (atomically); `base_model` is the HF folder they
  apply to (adapter_config.json's base_model_name_or_path). Collective in a multi-process job."""
  cfg = model.cfg
  if not cfg.lora_rank:
    raise ValueError(f"save_adapter: the model has no LoRA adapters ({folder})")
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "target_modules": sorted(cfg.lora_targets),
            "use_rslora": False, "inference_mode": True, "base_model_name_or_path": base_model}
  tensors = adapter_tensors(model)
  with atomic_dir(folder) as tmp:
    if multihost.is_leader():
      save_safetensors(tensors, files.join(tmp, ADAPTER_WEIGHTS), {"format": "pt"})
      files.write_text(files.join(tmp, ADAPTER_CONFIG), json.dumps(config, indent=2))


def set_base(folder: str, base_model: str) -> None:
  """Points an adapter folder's config at `base_model` (atomic rewrite of adapter_config.json)."""
  path = files.join(folder, ADAPTER_CONFIG)
  config = json.loads(files.read_text(path))
  config["base_model_name_or_path"] = base_model
  files.write_text(path, json.dumps(config, indent=2))
