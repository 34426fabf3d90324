"""The one table of preference methods: what each method of `config.methods` trains with.

A row says, for one method,
  objective     its loss (`rosepo_jax.losses`: (h_BxK, eps_BxK, valid_BxK, beta) -> loss_B)
  rejected      rejected responses per prompt: a number, or "sdpo_k" (config.preference.sdpo_k);
                methods on the negatives stage's pairs take one per kept strategy
  pairs         "random": k uniform non-target candidates per prompt, drawn by the method's own
                unit; "negatives": the negatives stage's pairs (METHOD.md section 3)
  eps           "none" (0), "constant" (config.smoothing.cdpo_eps; < 0: the mean oracle eps of
                the negatives stage's pairs), "pairs" (each pair's oracle eps, METHOD.md section 4)
                or "world" (each pair's ideal eps from the synthetic world's true probabilities:
                what a perfect oracle would give; the synthetic world only)
  dropped       strategies left out of the negatives stage's pairs (the ablations)

The preference, compile and runner code read only this table; a new method is one row here plus
its objective in losses.py. `config.preference.rosepo_form="robust"` trains the methods whose eps
comes from the pairs with rdpo's form instead of their objective (METHOD.md section 5).
"""

from __future__ import annotations

import dataclasses

from rosepo_jax import losses


@dataclasses.dataclass(frozen=True)
class Method:
  objective: losses.Objective
  rejected: int | str = 1
  pairs: str = "random"  # random | negatives
  eps: str = "none"  # none | constant | pairs | world
  dropped: frozenset[str] = frozenset()

  def __post_init__(self):
    if self.pairs not in ("random", "negatives"):
      raise ValueError(f"Method.pairs={self.pairs!r}; expected random or negatives")
    if self.eps not in ("none", "constant", "pairs", "world"):
      raise ValueError(f"Method.eps={self.eps!r}; expected none, constant, pairs or world")
    if self.per_pair_eps and self.pairs != "negatives":
      raise ValueError(f"Method.eps={self.eps!r} needs pairs='negatives' (eps is stored with "
                       "the pair)")

  @property
  def per_pair_eps(self) -> bool:
    """Whether each pair brings its own eps (the oracle's, or the world's)."""
    return self.eps in ("pairs", "world")


_ROSEPO = dict(objective=losses.cdpo, pairs="negatives", eps="pairs")

METHODS: dict[str, Method] = {
    "dpo": Method(losses.dpo),
    "cdpo": Method(losses.cdpo, eps="constant"),
    "rdpo": Method(losses.rdpo, eps="constant"),
    "ipo": Method(losses.ipo),
    "slic": Method(losses.slic),
    "sdpo": Method(losses.sdpo, rejected="sdpo_k"),
    "rosepo": Method(**_ROSEPO),
    "rosepo_no_smoothing": Method(**{**_ROSEPO, "eps": "none"}),
    "rosepo_no_self_hard": Method(**_ROSEPO, dropped=frozenset({"self_hard"})),
    "rosepo_no_semantic": Method(**_ROSEPO, dropped=frozenset({"semantic", "hallucination"})),
    "rosepo_no_popularity": Method(**_ROSEPO, dropped=frozenset({"popularity"})),
    "rosepo_world": Method(**{**_ROSEPO, "eps": "world"}),
}


def get(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown preference method {name!r}; expected one of {sorted(METHODS)}")
  return METHODS[name]


def objective(method: Method, rosepo_form: str) -> losses.Objective:
  """The objective `method` trains with under `config.preference.rosepo_form`."""
  return losses.rdpo if method.per_pair_eps and rosepo_form == "robust" else method.objective


def uses_negatives(method: Method, cdpo_eps: float) -> bool:
  """Whether the method reads the negatives stage's pairs (for its rejected responses, or for
  the mean eps that stands in for a negative cdpo_eps)."""
  return method.pairs == "negatives" or (method.eps == "constant" and cdpo_eps < 0)


def num_rejected(method: Method, sdpo_k: int, strategies) -> int:
  """Rejected responses per prompt; for the negatives stage's pairs, the most a prompt can get
  (one per kept strategy, plus a real hallucination when semantic pairs are kept)."""
  if method.pairs == "negatives":
    kept = [s for s in strategies if s not in method.dropped]
    return len(kept) + ("semantic" in kept and "hallucination" not in method.dropped)
  return sdpo_k if method.rejected == "sdpo_k" else int(method.rejected)
