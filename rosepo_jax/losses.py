"""Losses (METHOD.md sections 2 and 5) as pure functions of summed response log-probs.

Preference inputs, per prompt b and rejected response j (K rejected per prompt, padded):
  policy_chosen_B, ref_chosen_B          log pi(y_w|x), log pi_ref(y_w|x), summed over tokens
  policy_rejected_BxK, ref_rejected_BxK  the same for each rejected y_l,j
  eps_BxK                                per-pair smoothing factor (cdpo: a constant; rosepo: oracle)
  rejected_valid_BxK                     False for padding pairs
All functions return (loss_B, metrics): a per-prompt loss (pairwise losses averaged over the
prompt's valid pairs; sdpo is one listwise term) and a dict of per-prompt metric vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PAIRWISE = ("dpo", "cdpo", "rdpo", "ipo", "rosepo")
METHODS = PAIRWISE + ("sdpo",)


def sft_loss(token_logps_BxR: jax.Array, valid_BxR: jax.Array) -> jax.Array:
  """NLL of response tokens, summed per token and averaged over the batch's response tokens."""
  valid = valid_BxR.astype(jnp.float32)
  return -(token_logps_BxR * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def _pair_logits(beta, policy_chosen_B, ref_chosen_B, policy_rejected_BxK, ref_rejected_BxK):
  chosen_B = beta * (policy_chosen_B - ref_chosen_B)
  rejected_BxK = beta * (policy_rejected_BxK - ref_rejected_BxK)
  return chosen_B, rejected_BxK, chosen_B[:, None] - rejected_BxK


def pairwise_loss(h_BxK: jax.Array, eps_BxK: jax.Array, method: str, beta: float) -> jax.Array:
  """Per-pair loss [B, K] of a pairwise method, given h = beta * (chosen - rejected log-ratio)."""
  log_sig, log_sig_neg = jax.nn.log_sigmoid(h_BxK), jax.nn.log_sigmoid(-h_BxK)
  if method == "dpo":
    return -log_sig
  if method in ("cdpo", "rosepo"):
    return -(1 - eps_BxK) * log_sig - eps_BxK * log_sig_neg
  if method == "rdpo":
    return (-(1 - eps_BxK) * log_sig + eps_BxK * log_sig_neg) / (1 - 2 * eps_BxK)
  if method == "ipo":
    return (h_BxK / beta - 1 / (2 * beta)) ** 2
  raise ValueError(f"unknown pairwise method {method!r}; expected one of {PAIRWISE}")


def preference_loss(method: str, policy_chosen_B, ref_chosen_B, policy_rejected_BxK,
                    ref_rejected_BxK, eps_BxK, rejected_valid_BxK, beta: float = 1.0,
                    rosepo_form: str = "conservative"):
  """Loss per prompt [B] and metrics for any method of METHOD.md section 5.

  rosepo uses the cdpo form with per-pair eps; ``rosepo_form="robust"`` switches it to rdpo.
  """
  if method not in METHODS:
    raise ValueError(f"unknown preference method {method!r}; expected one of {METHODS}")
  valid = rejected_valid_BxK.astype(jnp.float32)
  num_pairs_B = jnp.maximum(valid.sum(axis=1), 1.0)
  chosen_B, rejected_BxK, h_BxK = _pair_logits(beta, policy_chosen_B, ref_chosen_B,
                                               policy_rejected_BxK, ref_rejected_BxK)
  if method == "sdpo":
    # -log sigmoid(-logsumexp_j h'_j), h'_j = beta*(rejected_j - chosen log-ratio) = -h_j.
    neg_h = jnp.where(rejected_valid_BxK, -h_BxK, -jnp.inf)
    loss_B = -jax.nn.log_sigmoid(-jax.nn.logsumexp(neg_h, axis=1))
  else:
    form = "rdpo" if method == "rosepo" and rosepo_form == "robust" else method
    if method == "rosepo" and rosepo_form not in ("conservative", "robust"):
      raise ValueError(f"rosepo_form={rosepo_form!r}; expected conservative or robust")
    loss_B = (pairwise_loss(h_BxK, eps_BxK, form, beta) * valid).sum(axis=1) / num_pairs_B

  def mean_pairs(x_BxK):
    return (x_BxK * valid).sum(axis=1) / num_pairs_B

  metrics = {
      "loss": loss_B,
      "rewards/chosen": chosen_B,
      "rewards/rejected": mean_pairs(rejected_BxK),
      "rewards/margin": mean_pairs(h_BxK),
      "rewards/accuracy": mean_pairs((h_BxK > 0).astype(jnp.float32)),
      "logps/chosen": policy_chosen_B,
      "logps/rejected": mean_pairs(policy_rejected_BxK),
      "eps": mean_pairs(eps_BxK),
  }
  return loss_B, metrics
