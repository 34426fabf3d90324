"""The preference oracle (METHOD.md section 4): SASRec over item ids, and the smoothing factor.

SASRec (Kang & McAuley, 2018): item embeddings + learned positions, causal self-attention blocks
(pre-norm, dropout), the last position's state scored against every item embedding (shared).
Trained on the training split with cross-entropy over the whole catalogue, early-stopped on
validation HitRatio@1 over the 20 candidates. Its score s(u, i) is the logit of item i given u's
history; a preference pair's smoothing factor is

    eps = clip(lam * sigmoid((s(u, y_l) - s(u, y_w)) / tau), eps_min, eps_max)

Cross-fitting (`OracleConfig.folds` = K > 1): the training users are dealt into K folds
(`user_folds`) and K fold oracles are trained, each without one fold; a pair's scores come from
the oracle that never trained on its user (`cross_fitted_scores`), so its eps is out of sample.
The oracle trained on every user is the one whose test metrics are reported.

Shapes: B batch, L history length (left-padded with the padding id = num_items), D model width,
I catalogue size, C candidates.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from rosepo_jax import files, multihost, progress
from rosepo_jax.checkpoints.atomic import atomic_dir


@dataclasses.dataclass(frozen=True)
class OracleConfig:
  dim: int = 64
  num_blocks: int = 2
  num_heads: int = 1
  dropout: float = 0.2
  max_len: int = 10
  learning_rate: float = 1e-3
  batch_size: int = 256
  max_epochs: int = 200
  patience: int = 10  # epochs without a better validation HitRatio@1
  seed: int = 0
  folds: int = 3  # cross-fitting: > 1 fold oracles, each trained without one fold of the users


@dataclasses.dataclass(frozen=True)
class SmoothingConfig:
  """The smoothing factor's settings (METHOD.md section 4) and cDPO's constant eps."""
  lam: float = 1.0
  tau: float = 1.0
  eps_min: float = 0.0
  eps_max: float = 0.45
  semantic_eps: float = 0.0  # pairs whose rejected item is not a candidate (no oracle score)
  cdpo_eps: float = -1.0  # cdpo / rdpo; < 0: the mean oracle eps of the negatives stage's pairs
  fit_tau: bool = True  # tau is the oracle stage's fit on validation (calibration.json); False: tau


class SASRec(nnx.Module):
  def __init__(self, num_items: int, cfg: OracleConfig, rngs: nnx.Rngs):
    d = cfg.dim
    self.num_items, self.cfg = num_items, cfg
    init = nnx.initializers.normal(stddev=d ** -0.5)
    self.item_embed = nnx.Param(init(rngs.params(), (num_items + 1, d)))  # last row: padding
    self.pos_embed = nnx.Param(init(rngs.params(), (cfg.max_len, d)))
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
    self.attn_norms = nnx.List([nnx.LayerNorm(d, rngs=rngs) for _ in range(cfg.num_blocks)])
    self.attns = nnx.List([nnx.MultiHeadAttention(cfg.num_heads, d, d, dropout_rate=cfg.dropout,
                                                  decode=False, rngs=rngs)
                           for _ in range(cfg.num_blocks)])
    self.ffn_norms = nnx.List([nnx.LayerNorm(d, rngs=rngs) for _ in range(cfg.num_blocks)])
    self.ffn_in = nnx.List([nnx.Linear(d, d, rngs=rngs) for _ in range(cfg.num_blocks)])
    self.ffn_out = nnx.List([nnx.Linear(d, d, rngs=rngs) for _ in range(cfg.num_blocks)])
    self.final_norm = nnx.LayerNorm(d, rngs=rngs)

  def user_state(self, history_BxL: jax.Array) -> jax.Array:
    """The last position's state [B, D] for left-padded histories (padding id = num_items)."""
    valid_BxL = history_BxL != self.num_items
    x = self.item_embed[...][history_BxL] * (self.cfg.dim ** 0.5)
    x = (x + self.pos_embed[...][None, -history_BxL.shape[1]:]) * valid_BxL[..., None]
    x = self.dropout(x)
    length = history_BxL.shape[1]
    mask = (jnp.tril(jnp.ones((length, length), bool))[None] & valid_BxL[:, None, :])[:, None]
    for norm_a, attn, norm_f, f_in, f_out in zip(self.attn_norms, self.attns, self.ffn_norms,
                                                 self.ffn_in, self.ffn_out):
      h = norm_a(x)
      x = x + self.dropout(attn(h, h, h, mask=mask))
      h = norm_f(x)
      x = x + self.dropout(f_out(self.dropout(jax.nn.gelu(f_in(h)))))
      x = x * valid_BxL[..., None]
    return self.final_norm(x[:, -1])

  def __call__(self, history_BxL: jax.Array) -> jax.Array:
    """Logits [B, I] over the catalogue: s(u, i) for every item i."""
    return self.user_state(history_BxL) @ self.item_embed[...][:self.num_items].T


def user_folds(users: Sequence[int], folds: int, seed: int) -> dict[int, int]:
  """The fold (0 .. folds - 1) of each distinct user of `users`: a seeded shuffle of the users
  dealt round-robin, so that fold sizes differ by at most one user."""
  distinct = sorted({int(u) for u in users})
  order = np.random.default_rng(seed).permutation(len(distinct))
  return {distinct[j]: i % folds for i, j in enumerate(order)}


def fold_training_sets(train_examples: Sequence, folds: int, seed: int
                       ) -> tuple[list[list], list[str], dict[int, int]]:
  """The oracle stage's training sets: every training example (the all-users oracle), then, with
  `folds` > 1, each fold oracle's (every user but fold k's, `user_folds`); their names; and each
  training user's fold ({} without cross-fitting)."""
  if folds <= 1:
    return [list(train_examples)], ["oracle"], {}
  user_fold = user_folds([e.user for e in train_examples], folds, seed)
  sets = [list(train_examples)] + [[e for e in train_examples if user_fold[int(e.user)] != k]
                                   for k in range(folds)]
  return sets, ["oracle"] + [f"fold {k}" for k in range(folds)], user_fold


def cross_fitted_scores(oracles: Sequence["Oracle"], fallback: "Oracle",
                        user_fold: Mapping[int, int], users: Sequence[int],
                        histories: Sequence[Sequence[int]], items_BxC: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
  """s(u, i) [B, C] of each row by the oracle that never trained on its user: the fold oracle
  ``oracles[user_fold[u]]``, or `fallback` for a user outside the folds (or without fold oracles).
  Also returns each row's fold [B] (-1: `fallback`)."""
  fold_B = np.array([user_fold.get(int(u), -1) if oracles else -1 for u in users], np.int64)
  items_BxC = np.asarray(items_BxC)
  out = np.zeros(items_BxC.shape, np.float32)
  for k in np.unique(fold_B):
    rows = np.flatnonzero(fold_B == k)
    oracle = fallback if k < 0 else oracles[k]
    out[rows] = oracle.scores([histories[r] for r in rows], items_BxC[rows])
  return out, fold_B


def smoothing_factor(score_rejected, score_chosen, cfg: SmoothingConfig):
  """eps of a pair: the Bradley-Terry probability that its label is wrong, scaled and clipped."""
  z = (np.asarray(score_rejected, np.float64) - np.asarray(score_chosen, np.float64)) / cfg.tau
  return np.clip(cfg.lam / (1.0 + np.exp(-z)), cfg.eps_min, cfg.eps_max)


def world_eps(prob_rejected, prob_chosen, cfg: SmoothingConfig):
  """The ideal eps of a pair from a world that knows the truth: the Bradley-Terry probability
  that the rejected item is the preferred one, p_l / (p_w + p_l), from the true next-item
  probabilities (`data.synthetic.world_truth`), scaled and clipped like the oracle's."""
  p_l, p_w = np.asarray(prob_rejected, np.float64), np.asarray(prob_chosen, np.float64)
  return np.clip(cfg.lam * p_l / np.maximum(p_w + p_l, 1e-300), cfg.eps_min, cfg.eps_max)


def choice_nll(scores_NxC: np.ndarray, target_pos_N: np.ndarray, tau: float) -> float:
  """Mean negative log-likelihood of the observed choices under softmax(scores / tau) over each
  example's candidates (float64)."""
  z = np.asarray(scores_NxC, np.float64) / tau
  m = z.max(axis=1)
  lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
  return float(np.mean(lse - z[np.arange(len(z)), target_pos_N]))


def fit_temperature(scores_NxC: np.ndarray, target_pos_N: np.ndarray, lo: float = 1e-2,
                    hi: float = 1e2) -> float:
  """Temperature scaling: the tau in [lo, hi] of maximum likelihood of the observed choices
  (`choice_nll`). The NLL is convex in 1 / tau, so a ternary search on 1 / tau finds it."""
  a, b = 1.0 / hi, 1.0 / lo
  for _ in range(200):
    m1, m2 = a + (b - a) / 3, b - (b - a) / 3
    if choice_nll(scores_NxC, target_pos_N, 1.0 / m1) <= choice_nll(scores_NxC, target_pos_N,
                                                                     1.0 / m2):
      b = m2
    else:
      a = m1
  return 1.0 / ((a + b) / 2)


def reliability(scores_NxC: np.ndarray, target_pos_N: np.ndarray, tau: float,
                bins: int = 10) -> list[dict]:
  """Per bin of the predicted probability of each example's top candidate (softmax(scores /
  tau)): how many examples, their mean prediction, and how often the top candidate is the target."""
  z = np.asarray(scores_NxC, np.float64) / tau
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  top = p.argmax(axis=1)
  confidence, correct = p.max(axis=1), top == np.asarray(target_pos_N)
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
  return [{"bin": [float(edges[k]), float(edges[k + 1])], "examples": int((which == k).sum()),
           "predicted": float(confidence[which == k].mean()) if (which == k).any() else None,
           "observed": float(correct[which == k].mean()) if (which == k).any() else None}
          for k in range(bins)]


def pad_histories(histories: Sequence[Sequence[int]], max_len: int, pad_id: int) -> np.ndarray:
  """Left-pads (keeping the last max_len items) to [B, max_len] int32."""
  out = np.full((len(histories), max_len), pad_id, np.int32)
  for i, h in enumerate(histories):
    h = list(h)[-max_len:]
    if h:
      out[i, -len(h):] = h
  return out


def candidate_metrics(scores_BxC: np.ndarray, target_pos_B: np.ndarray) -> dict:
  """HitRatio@1 and NDCG@10 of the target among the candidates (ties count against it)."""
  target = scores_BxC[np.arange(len(scores_BxC)), target_pos_B]
  rank = (scores_BxC >= target[:, None]).sum(axis=1) - 1  # 0 = best
  return {"hit_ratio@1": float(np.mean(rank == 0)),
          "ndcg@10": float(np.mean(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)))}


@dataclasses.dataclass
class Oracle:
  """A trained SASRec and what scoring needs."""
  model: SASRec
  cfg: OracleConfig

  def scores(self, histories: Sequence[Sequence[int]], items_BxC: np.ndarray,
             batch_size: int = 1024) -> np.ndarray:
    """s(u, i) [B, C] for each user's listed items."""
    self.model.eval()
    out = []
    graphdef, state = nnx.split(self.model)
    logits_fn = _logits_fn(graphdef)
    hist = pad_histories(histories, self.cfg.max_len, self.model.num_items)
    for start in range(0, len(hist), batch_size):
      logits = np.asarray(logits_fn(state, hist[start:start + batch_size]))
      out.append(np.take_along_axis(logits, np.asarray(items_BxC[start:start + batch_size]), 1))
    return np.concatenate(out) if out else np.zeros((0, np.shape(items_BxC)[1]), np.float32)

  def item_embeddings(self) -> np.ndarray:
    """The item embeddings [I, D] (float32, on the host; the padding row left out)."""
    rows = multihost.to_host(self.model.item_embed[...])
    return np.asarray(rows, np.float32)[:self.model.num_items]

  def evaluate(self, examples) -> dict:
    """HitRatio@1 / NDCG@10 over each example's candidates."""
    cands = np.array([e.candidates for e in examples])
    scores = self.scores([e.history for e in examples], cands)
    target_pos = np.array([list(e.candidates).index(e.target) for e in examples])
    return candidate_metrics(scores, target_pos)


@functools.lru_cache(maxsize=8)
def _logits_fn(graphdef):
  return jax.jit(lambda state, hist: nnx.merge(graphdef, state)(hist))


def train_oracle(train_examples, val_examples, num_items: int, cfg: OracleConfig,
                 log=print, name: str = "oracle", stop: threading.Event | None = None
                 ) -> tuple[Oracle, dict]:
  """Trains SASRec; keeps the parameters of the best validation HitRatio@1 epoch and stops after
  `cfg.patience` epochs without a better one. `name` labels its log lines and progress bar; once
  `stop` is set, the next step raises `Stopped` (how `train_oracles` ends its other threads)."""
  model = SASRec(num_items, cfg, nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1))
  optimizer = nnx.Optimizer(model, optax.adam(cfg.learning_rate), wrt=nnx.Param)
  hist = pad_histories([e.history for e in train_examples], cfg.max_len, num_items)
  targets = np.array([e.target for e in train_examples], np.int32)

  @nnx.jit
  def step(model, optimizer, hist_BxL, target_B):
    def loss_fn(model):
      logits = model(hist_BxL)
      return optax.softmax_cross_entropy_with_integer_labels(logits, target_B).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  oracle = Oracle(model, cfg)
  if not len(hist):
    raise ValueError("train_oracle: no training examples")
  batch = min(cfg.batch_size, len(hist))  # fewer examples than a batch: one batch of them all
  rng = np.random.default_rng(cfg.seed)
  best, best_state, best_epoch, start = -1.0, None, 0, time.time()
  epoch = 0
  bar = progress.bar(cfg.max_epochs, f"{name} (at most)", "epoch")
  for epoch in range(1, cfg.max_epochs + 1):
    model.train()
    order = rng.permutation(len(hist))
    losses = []
    for i in range(0, len(order) - batch + 1, batch):
      if stop is not None and stop.is_set():
        raise Stopped(f"{name}: stopped at epoch {epoch}")
      idx = order[i:i + batch]
      losses.append(step(model, optimizer, hist[idx], targets[idx]))
    val = oracle.evaluate(val_examples)
    log(f"{name} epoch {epoch}: loss {float(np.mean(jax.device_get(losses))):.4f} "
        f"val hit_ratio@1 {val['hit_ratio@1']:.4f} ndcg@10 {val['ndcg@10']:.4f}")
    bar.update(1)
    if val["hit_ratio@1"] > best:
      best, best_epoch = val["hit_ratio@1"], epoch
      best_state = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    elif epoch - best_epoch >= cfg.patience:
      break
  bar.close()
  nnx.update(model, best_state)
  return oracle, {"epochs": epoch, "best_epoch": best_epoch, "val_hit_ratio@1": best,
                  "seconds": round(time.time() - start, 1)}


def train_oracles(train_sets: Sequence[Sequence], val_examples, num_items: int,
                  cfg: OracleConfig, names: Sequence[str], log=print,
                  workers: int | None = None) -> list[tuple[Oracle, dict]]:
  """`train_oracle` on each training set, `workers` at a time (default: one per CPU core, at
  most one per set), in threads: each model is trained exactly as alone (its own seeded init,
  dropout stream and shuffle), and the small models' steps overlap on the host's cores (the
  demo's four models on 2 cores: 0.79 of their time one after another, docs/benchmarks.md).
  Returns (oracle, info) per set, in order. An error (or Ctrl-C) in any of them stops the others
  at their next step and is raised."""
  workers = workers or min(len(train_sets), os.cpu_count() or 1)
  stop = threading.Event()
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    futures = [pool.submit(train_oracle, examples, val_examples, num_items, cfg, log, name, stop)
               for examples, name in zip(train_sets, names, strict=True)]
    try:
      concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
      for future in futures:
        if future.done() and future.exception() is not None:
          raise future.exception()
      return [future.result() for future in futures]
    except BaseException:
      stop.set()
      for future in futures:
        future.cancel()
      raise


class Stopped(Exception):
  """A `train_oracle` call ended early because `train_oracles` stopped it."""


def save_oracle(oracle: Oracle, folder: str) -> None:
  """Orbax params + oracle_config.json, atomically. Collective in a multi-process job (every
  process holds the same oracle; the leader writes it)."""
  params = jax.tree.map(multihost.to_host, nnx.state(oracle.model, nnx.Param).to_pure_dict())
  with atomic_dir(folder) as tmp:
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(files.native(files.join(tmp, "params")), params)
    ckpt.wait_until_finished()
    if multihost.is_leader():
      files.write_text(files.join(tmp, "oracle_config.json"), json.dumps(
          {"num_items": oracle.model.num_items, **dataclasses.asdict(oracle.cfg)}))


def load_oracle(folder: str) -> Oracle:
  path = files.join(folder, "oracle_config.json")
  if not files.isfile(path):
    raise FileNotFoundError(f"{folder}: no oracle_config.json (run the oracle stage first)")
  d = json.loads(files.read_text(path))
  num_items = d.pop("num_items")
  cfg = OracleConfig(**d)
  model = SASRec(num_items, cfg, nnx.Rngs(params=0, dropout=1))
  params = nnx.state(model, nnx.Param)
  restored = ocp.StandardCheckpointer().restore(
      files.native(files.join(folder, "params")),
      jax.tree.map(ocp.utils.to_shape_dtype_struct, params.to_pure_dict()))
  nnx.replace_by_pure_dict(params, restored)
  nnx.update(model, params)
  return Oracle(model, cfg)
