"""LoRA adapters as a PEFT folder: `adapter_config.json` and `adapter_model.safetensors`, loadable
with `peft.PeftModel.from_pretrained(base, folder)` on the Hugging Face folder of the model the
adapters were trained on.

Ours: kernel [in, out], lora_a [in, r], lora_b [r, out], delta = (alpha / r) * a @ b. PEFT (torch
Linear weights [out, in]): lora_A.weight [r, in], lora_B.weight [out, r], delta = (alpha / r) *
B @ A; so lora_A = a.T and lora_B = b.T, named after the layer's HF weight under
``base_model.model.``.

Title-token rows that trained with the adapters (`ModelConfig.lora_token_rows`) go as peft's
trainable tokens (`trainable_token_indices`): peft stores the rows' new values, not deltas, as
``<embedding>.token_adapter.trainable_tokens_delta`` [count, D] (and the untied head's rows under
its own name), and writes them over the base's rows. With hybrid item embeddings the input rows
carry the projected item embedding and the head's rows do not, so both go, and the base must
have an untied head.
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
_TOKEN_ROWS = ".token_adapter.trainable_tokens_delta"  # after the module's name


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
  for module, rows_NxD in _token_rows(model).items():
    out[f"base_model.model.{module}{_TOKEN_ROWS}"] = rows_NxD
  return out


def _token_rows(model: Decoder) -> dict[str, np.ndarray]:
  """HF module -> the rows [count, D] (float32) that the adapter writes over its base's, for the
  token rows that trained with the adapters (`ModelConfig.lora_token_rows`; none: {}): the
  embedding's (base + delta, plus the projected item embedding with hybrid item embeddings) and
  an untied head's (base + its delta). With hybrid item embeddings a tied head's rows (base +
  delta, no projection) go as the head's too: input and output rows then differ, so the base
  the adapter applies to must have an untied head (`model.untie_head`)."""
  cfg = model.cfg
  first, count = cfg.lora_token_rows
  if not count:
    return {}
  host = lambda x: np.asarray(multihost.to_host(x), np.float32)  # pylint: disable=unnecessary-lambda-assignment
  names = {name.path: _module(name)
           for name in P.param_names(cfg.replace(tie_word_embeddings=False))}
  embed_NxD = host(model.embed.get_value()[first:first + count]) + host(model.token_delta.get_value())
  rows = {names[("embed",)]: embed_NxD}
  if model.lm_head is not None:
    rows[names[("lm_head", "kernel")]] = (
        host(model.lm_head.kernel.get_value()[:, first:first + count].T)
        + host(model.head_token_delta.get_value()))
  if cfg.item_rows[1]:  # the same rows (ModelConfig checks)
    rows.setdefault(names[("lm_head", "kernel")], embed_NxD)
    rows[names[("embed",)]] = embed_NxD + host(model.item_embeddings())
  return rows


def _module(name: P.ParamName) -> str:
  """The HF module of a parameter ("model.embed_tokens" for "model.embed_tokens.weight")."""
  return name.hf[:-len(".weight")]


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
  first, count = cfg.lora_token_rows
  tensors = adapter_tensors(model)
  if count:  # the modules whose token rows `adapter_tensors` wrote
    indices = list(range(first, first + count))
    config["trainable_token_indices"] = {
        name[:-len(_TOKEN_ROWS)].split(".")[-1]: indices
        for name in tensors if name.endswith(_TOKEN_ROWS)}
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
