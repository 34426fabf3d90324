"""Every loss vs a float64 numpy implementation of METHOD.md section 5, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import losses as L
from rosepo_jax import methods

OBJECTIVES = ("dpo", "cdpo", "rdpo", "ipo", "slic", "rosepo", "sdpo")


def _logsig(x):
  return -np.logaddexp(0.0, -x)


def reference_loss(method, pc, rc, pr, rr, eps, valid, beta, form="conservative"):
  """float64, written from METHOD.md: per-prompt loss [B]."""
  chosen = beta * (pc - rc)
  h = chosen[:, None] - beta * (pr - rr)
  if method == "sdpo":
    out = []
    for b in range(len(pc)):
      hs = -h[b][valid[b]]
      out.append(-_logsig(-np.log(np.sum(np.exp(hs)))))
    return np.array(out)
  if method == "rosepo":
    method = "rdpo" if form == "robust" else "cdpo"
  if method == "dpo":
    pair = -_logsig(h)
  elif method == "cdpo":
    pair = -(1 - eps) * _logsig(h) - eps * _logsig(-h)
  elif method == "rdpo":
    pair = (-(1 - eps) * _logsig(h) + eps * _logsig(-h)) / (1 - 2 * eps)
  elif method == "ipo":
    pair = (h / beta - 1 / (2 * beta)) ** 2
  elif method == "slic":
    pair = np.maximum(0.0, 1.0 - h)
  return np.array([pair[b][valid[b]].mean() for b in range(len(pc))])


def _inputs(seed, b=16, k=3):
  rs = np.random.RandomState(seed)
  valid = rs.rand(b, k) < 0.7
  valid[:, 0] = True
  return dict(pc=rs.normal(-20, 5, b), rc=rs.normal(-20, 5, b), pr=rs.normal(-22, 5, (b, k)),
              rr=rs.normal(-22, 5, (b, k)), eps=rs.uniform(0, 0.45, (b, k)), valid=valid)


def _ours(method, x, beta, form="conservative"):
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment
  objective = methods.objective(methods.get(method), form)
  loss, metrics = L.preference_loss(objective, f32(x["pc"]), f32(x["rc"]), f32(x["pr"]),
                                    f32(x["rr"]), f32(x["eps"]), jnp.asarray(x["valid"]),
                                    beta=beta)
  return np.asarray(loss, np.float64), metrics


@pytest.mark.parametrize("method,form", [(m, "conservative") for m in OBJECTIVES] +
                         [("rosepo", "robust")])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_loss_values_match_float64(method, form, beta):
  x = _inputs(0)
  ours, _ = _ours(method, x, beta, form)
  np.testing.assert_allclose(ours, reference_loss(method, **x, beta=beta, form=form),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", OBJECTIVES)
def test_gradients_wrt_policy_logps_match_float64(method):
  x = _inputs(1, b=6, k=3)
  beta = 0.5

  def ours_total(pc, pr):
    loss, _ = L.preference_loss(methods.get(method).objective, pc, jnp.asarray(x["rc"], jnp.float32), pr,
                                jnp.asarray(x["rr"], jnp.float32),
                                jnp.asarray(x["eps"], jnp.float32), jnp.asarray(x["valid"]),
                                beta=beta)
    return loss.sum()

  g_pc, g_pr = jax.grad(ours_total, argnums=(0, 1))(jnp.asarray(x["pc"], jnp.float32),
                                                    jnp.asarray(x["pr"], jnp.float32))

  def ref_total(pc, pr):
    return reference_loss(method, pc, x["rc"], pr, x["rr"], x["eps"], x["valid"], beta).sum()

  d = 1e-6
  num_pc = np.array([(ref_total(x["pc"] + d * e, x["pr"]) - ref_total(x["pc"] - d * e, x["pr"]))
                     / (2 * d) for e in np.eye(6)])
  num_pr = np.zeros_like(x["pr"])
  for i in range(6):
    for j in range(3):
      e = np.zeros_like(x["pr"])
      e[i, j] = d
      num_pr[i, j] = (ref_total(x["pc"], x["pr"] + e) - ref_total(x["pc"], x["pr"] - e)) / (2 * d)
  np.testing.assert_allclose(np.asarray(g_pc), num_pc, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_pr), num_pr, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(g_pr)[~x["valid"]] == 0)  # padding pairs get no gradient


def test_special_cases():
  x = _inputs(2)
  x0 = dict(x, eps=np.zeros_like(x["eps"]))
  np.testing.assert_allclose(_ours("rosepo", x0, 1.0)[0], _ours("dpo", x0, 1.0)[0], rtol=1e-6)
  xc = dict(x, eps=np.full_like(x["eps"], 0.2))
  np.testing.assert_allclose(_ours("rosepo", xc, 1.0)[0], _ours("cdpo", xc, 1.0)[0], rtol=1e-6)
  x1 = {k: (v[:, :1] if np.ndim(v) == 2 else v) for k, v in x.items()}
  np.testing.assert_allclose(_ours("sdpo", x1, 1.0)[0], _ours("dpo", x1, 1.0)[0], rtol=1e-6)


def test_metrics():
  x = _inputs(3)
  _, m = _ours("rosepo", x, 1.0)
  chosen = x["pc"] - x["rc"]
  h = chosen[:, None] - (x["pr"] - x["rr"])
  v = x["valid"]
  acc = np.array([(h[b][v[b]] > 0).mean() for b in range(16)])
  np.testing.assert_allclose(np.asarray(m["rewards/accuracy"]), acc, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(m["rewards/chosen"]), chosen, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(m["eps"]),
                             [x["eps"][b][v[b]].mean() for b in range(16)], rtol=1e-6)
  assert set(m) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margin",
                    "rewards/accuracy", "logps/chosen", "logps/rejected", "eps"}


def test_sft_loss_averages_over_response_tokens():
  logps = jnp.array([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
  valid = jnp.array([[True, True, False], [True, False, False]])
  assert float(L.sft_loss(logps, valid)) == pytest.approx(2.0)


def test_unknown_method():
  with pytest.raises(ValueError, match="unknown preference method"):
    _ours("kto", _inputs(0), 1.0)


@pytest.mark.parametrize("method", ["rosepo", "dpo", "sdpo"])
def test_strategy_weights_scale_each_pairs_loss(method):
  """Mixture weights (METHOD.md section 3): a pairwise objective's loss is
  sum_k w_k loss_k / #{k valid, w_k > 0} (float64 reference); weight 1 everywhere is the unweighted
  loss; S-DPO (listwise) only drops weight-0 pairs."""
  x = _inputs(3)
  rs = np.random.RandomState(4)
  weights = rs.choice([0.0, 0.5, 1.0, 2.0], size=x["valid"].shape)
  weights[:, 0] = 1.0  # every prompt keeps a pair
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment
  objective = methods.objective(methods.get(method), "conservative")
  args = (objective, f32(x["pc"]), f32(x["rc"]), f32(x["pr"]), f32(x["rr"]), f32(x["eps"]),
          jnp.asarray(x["valid"]))
  ours = np.asarray(L.preference_loss(*args, beta=0.5, weights_BxK=f32(weights))[0], np.float64)
  kept = x["valid"] & (weights > 0)
  if method == "sdpo":
    want = reference_loss(method, **dict(x, valid=kept), beta=0.5)
  else:
    h = 0.5 * (x["pc"] - x["rc"])[:, None] - 0.5 * (x["pr"] - x["rr"])
    eps = x["eps"] if method == "rosepo" else 0.0 * x["eps"]
    pair = -(1 - eps) * _logsig(h) - eps * _logsig(-h)
    want = (pair * weights * x["valid"]).sum(1) / kept.sum(1)
  np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6)
  ones = np.asarray(L.preference_loss(*args, beta=0.5, weights_BxK=f32(np.ones_like(weights)))[0])
  np.testing.assert_array_equal(ones, np.asarray(L.preference_loss(*args, beta=0.5)[0]))


def _train_tabular(objective, eps, beta, steps, lr=0.2, seed=0):
  """A tabular policy over each pair's two responses (logits theta [P, 2], log pi = log_softmax)
  against a fixed tabular reference, trained by gradient descent on `objective` in float64 until
  `steps`; returns the log-ratio margin (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) -
  log pi_ref(y_l)) of each pair after each of `steps` (a list of step counts)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(seed)
    ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(len(eps), 2))), axis=1)
    eps_Px1 = jnp.asarray(eps, jnp.float64)[:, None]
    valid = jnp.ones((len(eps), 1), bool)

    def loss(theta):
      logp = jax.nn.log_softmax(theta, axis=1)
      return L.preference_loss(objective, logp[:, 0], ref[:, 0], logp[:, 1:], ref[:, 1:],
                               eps_Px1, valid, beta=beta)[0].sum()

    @jax.jit
    def run(theta, n):
      return jax.lax.fori_loop(0, n, lambda _, t: t - lr * jax.grad(loss)(t), theta)

    theta, done, out = ref, 0, []
    for n in steps:
      theta, done = run(theta, n - done), n
      logp = jax.nn.log_softmax(theta, axis=1)
      out.append(np.asarray((logp[:, 0] - ref[:, 0]) - (logp[:, 1] - ref[:, 1]), np.float64))
    return out


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_the_exact_optimum_of_each_loss(beta):
  """Trained to convergence in float64 on a tabular policy, conservative RosePO's (cDPO's) margin
  on each pair is log((1 - eps) / eps) / beta and IPO's is 1 / (2 beta), within 1e-4: the
  smoothing sets a finite target margin. DPO's and rDPO's keep growing (rDPO is unbiased for the
  clean loss: a separable pair has no finite optimum)."""
  eps = np.array([0.02, 0.1, 0.25, 0.4])
  cdpo = _train_tabular(L.cdpo, eps, beta, [20000])[0]
  np.testing.assert_allclose(cdpo, np.log((1 - eps) / eps) / beta, atol=1e-4)
  ipo = _train_tabular(L.ipo, eps, beta, [20000])[0]
  np.testing.assert_allclose(ipo, np.full(len(eps), 1 / (2 * beta)), atol=1e-4)
  for objective in (L.dpo, L.rdpo):
    early, late = _train_tabular(objective, eps, beta, [10000, 20000])
    assert np.all(late > early + 1e-3), (objective.__name__, early, late)
    assert np.all(late > np.log((1 - eps.min()) / eps.min()) / beta), objective.__name__
