"""Model FLOPs and MFU accounting.

Training FLOPs per token (the usual analytic count, causal attention):
  forward  2 * N_matmul            (every weight matrix once; the LM head only where it runs)
         + 2 * 2 * L * H * Dh * T/2  (q.k and p.v against T/2 keys on average)
  backward 2x the forward for activations, plus 2 * N_trainable for weight gradients
so a fully trained dense model costs 6 * N + 6 * L * H * Dh * T per token (PaLM's 6N + 12LHQT with
causal halving). MFU = achieved model FLOP/s / (peak FLOP/s per device * devices), against the
dense bf16 peak of the device kind.
"""

from __future__ import annotations

from rosepo_jax.model import ModelConfig

# Dense bf16 peak FLOP/s per chip, matched as substrings of jax's `device_kind`.
PEAK_FLOPS = (
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
    ("A100", 312e12),
    ("H100", 989e12),  # SXM; the PCIe part peaks at 756e12
    ("H200", 989e12),
)


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of one device of this kind, or None when unknown (e.g. CPU)."""
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def train_flops(cfg: ModelConfig, tokens: float, seq_len: int, head_tokens: float | None = None,
                trainable_fraction: float = 1.0) -> float:
  """Training FLOPs of `tokens` real tokens in rows of `seq_len` slots.

  head_tokens: tokens where the LM head runs (our losses run it at scored positions only;
  default: every token); trainable_fraction: share of the weights that get gradients (LoRA: ~0).
  """
  d, f, dh = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  body = cfg.num_layers * (d * dh * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f)
  head_tokens = tokens if head_tokens is None else head_tokens
  matmul_forward = 2.0 * (body * tokens + cfg.vocab_size * d * head_tokens)
  attention_forward = 2.0 * 2.0 * cfg.num_layers * cfg.num_heads * dh * (seq_len / 2.0) * tokens
  forward = matmul_forward + attention_forward
  return 3.0 * forward - (1.0 - trainable_fraction) * matmul_forward


def mfu(flops_per_s: float, device_kind: str, num_devices: int) -> float | None:
  peak = peak_flops(device_kind)
  return None if peak is None else flops_per_s / (peak * num_devices)
