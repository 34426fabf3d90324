"""Losses (METHOD.md sections 2 and 5) as pure functions of summed response log-probs.

Preference inputs, per prompt b and rejected response j (K rejected per prompt, padded):
  policy_chosen_B, ref_chosen_B          log pi(y_w|x), log pi_ref(y_w|x), summed over tokens
  policy_rejected_BxK, ref_rejected_BxK  the same for each rejected y_l,j
  eps_BxK                                per-pair smoothing factor (cdpo: a constant; rosepo: oracle)
  rejected_valid_BxK                     False for padding pairs

An objective maps (h_BxK, eps_BxK, valid_BxK, beta) to a per-prompt loss [B], where
h = beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]. Pairwise objectives
are written per pair and averaged over the prompt's valid pairs by `pairwise`; sdpo is one
listwise term. `rosepo_jax.methods` names which objective each preference method trains with.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# (h_BxK, eps_BxK, valid_BxK, beta) -> loss_B
Objective = Callable[[jax.Array, jax.Array, jax.Array, float], jax.Array]


def sft_loss(token_logps_BxR: jax.Array, valid_BxR: jax.Array) -> jax.Array:
  """NLL of response tokens, summed per token and averaged over the batch's response tokens."""
  valid = valid_BxR.astype(jnp.float32)
  return -(token_logps_BxR * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def pairwise(pair_loss: Callable[[jax.Array, jax.Array, float], jax.Array]) -> Objective:
  """An objective from a per-pair loss (h_BxK, eps_BxK, beta) -> loss_BxK: the mean over each
  prompt's valid pairs. `valid_BxK` may hold per-pair weights (0: not a pair): the loss is then
  sum_k w_k loss_k / #{k: w_k > 0}, each pair's loss scaled by its weight."""
  def objective(h_BxK, eps_BxK, valid_BxK, beta):
    weight = valid_BxK.astype(jnp.float32)
    return (pair_loss(h_BxK, eps_BxK, beta) * weight).sum(axis=1) / jnp.maximum(
        (weight > 0).sum(axis=1), 1.0)
  objective.__name__ = objective.__qualname__ = pair_loss.__name__
  objective.__doc__ = pair_loss.__doc__
  return objective


@pairwise
def dpo(h_BxK, eps_BxK, beta):
  """DPO: -log sigmoid(h)."""
  del eps_BxK, beta
  return -jax.nn.log_sigmoid(h_BxK)


@pairwise
def cdpo(h_BxK, eps_BxK, beta):
  """Conservative DPO: -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)."""
  del beta
  return -(1 - eps_BxK) * jax.nn.log_sigmoid(h_BxK) - eps_BxK * jax.nn.log_sigmoid(-h_BxK)


@pairwise
def rdpo(h_BxK, eps_BxK, beta):
  """Robust DPO: [-(1 - eps) log sigmoid(h) + eps log sigmoid(-h)] / (1 - 2 eps)."""
  del beta
  return ((-(1 - eps_BxK) * jax.nn.log_sigmoid(h_BxK) + eps_BxK * jax.nn.log_sigmoid(-h_BxK))
          / (1 - 2 * eps_BxK))


@pairwise
def ipo(h_BxK, eps_BxK, beta):
  """IPO: (h / beta - 1 / (2 beta))^2."""
  del eps_BxK
  return (h_BxK / beta - 1 / (2 * beta)) ** 2


@pairwise
def slic(h_BxK, eps_BxK, beta):
  """SLiC's calibration hinge on the reference-normalised margin: max(0, 1 - h) (Zhao et al.
  2023, in the normalised form under which Liu et al. 2023, RSO, read it next to DPO)."""
  del eps_BxK, beta
  return jax.nn.relu(1.0 - h_BxK)


def sdpo(h_BxK, eps_BxK, valid_BxK, beta):
  """S-DPO (listwise): -log sigmoid(-logsumexp_j h'_j), h'_j = -h_j over the valid pairs (a
  weight in `valid_BxK` only says whether the pair takes part)."""
  del eps_BxK, beta
  neg_h = jnp.where(valid_BxK > 0, -h_BxK, -jnp.inf)
  return -jax.nn.log_sigmoid(-jax.nn.logsumexp(neg_h, axis=1))


def preference_loss(objective: Objective, policy_chosen_B, ref_chosen_B, policy_rejected_BxK,
                    ref_rejected_BxK, eps_BxK, rejected_valid_BxK, beta: float = 1.0,
                    weights_BxK=None):
  """Loss per prompt [B] under `objective` and the logged metrics (dict of [B] vectors).
  `weights_BxK`: per-pair loss weights (METHOD.md section 3's mixture; default 1)."""
  valid = rejected_valid_BxK.astype(jnp.float32)
  num_pairs_B = jnp.maximum(valid.sum(axis=1), 1.0)
  chosen_B = beta * (policy_chosen_B - ref_chosen_B)
  rejected_BxK = beta * (policy_rejected_BxK - ref_rejected_BxK)
  h_BxK = chosen_B[:, None] - rejected_BxK
  loss_B = objective(h_BxK, eps_BxK, rejected_valid_BxK if weights_BxK is None
                     else valid * weights_BxK, beta)

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
