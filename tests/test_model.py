"""Model: shapes, masks, KV cache, remat, dtypes, config handling."""

from conftest import assert_close
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import model as M


def _forward(m, tokens, valid):
  tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
  return m(tokens, M.positions_from_mask(valid), M.causal_mask(valid))[0]


@pytest.fixture(scope="module")
def tiny():
  return M.init_model(M.get_config("tiny"), seed=0)


def test_forward_shapes_and_param_count(tiny):
  logits = _forward(tiny, np.ones((2, 7), np.int32), np.ones((2, 7), bool))
  assert logits.shape == (2, 7, 256) and logits.dtype == jnp.float32
  n = sum(x.size for x in jax.tree.leaves(nnx.state(tiny, nnx.Param)))
  assert n == tiny.cfg.num_params


def test_left_padding_is_exact(tiny):
  rs = np.random.RandomState(0)
  seq = rs.randint(3, 256, 6)
  alone = _forward(tiny, seq[None], np.ones((1, 6), bool))[0]
  padded = np.concatenate([np.zeros(4, np.int32), seq])[None]
  valid = np.concatenate([np.zeros(4, bool), np.ones(6, bool)])[None]
  assert_close(_forward(tiny, padded, valid)[0, 4:], alone)


def test_segment_mask_matches_separate_forwards(tiny):
  rs = np.random.RandomState(1)
  a, b = rs.randint(3, 256, 5), rs.randint(3, 256, 3)
  packed = np.concatenate([a, b, [0, 0]])[None]
  segments = np.array([[1] * 5 + [2] * 3 + [0, 0]])
  positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0]])
  logits, _ = tiny(jnp.asarray(packed), jnp.asarray(positions),
                   M.segment_mask(jnp.asarray(segments)))
  assert_close(logits[0, :5], _forward(tiny, a[None], np.ones((1, 5), bool))[0])
  assert_close(logits[0, 5:8], _forward(tiny, b[None], np.ones((1, 3), bool))[0])


def test_kv_cache_token_by_token_equals_full_forward(tiny):
  rs = np.random.RandomState(2)
  b, t = 3, 9
  tokens = rs.randint(3, 256, (b, t)).astype(np.int32)
  valid = np.ones((b, t), bool)
  valid[0, :3] = False  # left padding
  valid[1, :1] = False
  full = _forward(tiny, tokens, valid)
  cache = M.KVCache.init(tiny.cfg, b, t)
  positions = M.positions_from_mask(jnp.asarray(valid))
  step_logits = []
  for i in range(t):
    key_valid = jnp.asarray(valid) & (jnp.arange(t) <= i)[None]
    logits, cache = tiny(jnp.asarray(tokens[:, i:i + 1]), positions[:, i:i + 1],
                         key_valid[:, None, :], cache)
    step_logits.append(logits[:, 0])
  assert int(cache.index) == t
  assert_close(jnp.stack(step_logits, 1), full, where=valid)


def test_cache_prefill_then_steps_equals_full_forward(tiny):
  rs = np.random.RandomState(3)
  tokens = rs.randint(3, 256, (2, 8)).astype(np.int32)
  valid = np.ones((2, 8), bool)
  full = _forward(tiny, tokens, valid)
  cache = M.KVCache.init(tiny.cfg, 2, 8)
  slots = jnp.arange(8)
  prefill_mask = (slots[None, None, :] <= jnp.arange(5)[None, :, None]).repeat(2, 0)
  positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
  logits, cache = tiny(jnp.asarray(tokens[:, :5]), positions[:, :5], prefill_mask, cache)
  assert_close(logits, full[:, :5])
  for i in range(5, 8):
    logits, cache = tiny(jnp.asarray(tokens[:, i:i + 1]), positions[:, i:i + 1],
                         jnp.broadcast_to(slots <= i, (2, 1, 8)), cache)
    assert_close(logits[:, 0], full[:, i])


def test_remat_same_loss_and_grads():
  cfg = M.get_config("tiny")
  tokens = jnp.asarray(np.random.RandomState(4).randint(3, 256, (2, 6)))
  valid = jnp.ones((2, 6), bool)

  def loss_and_grads(c):
    graphdef, state = nnx.split(M.init_model(c, seed=1))

    def loss(s):
      return _forward(nnx.merge(graphdef, s), tokens, valid).mean()
    return jax.value_and_grad(loss)(state)

  (l0, g0), (l1, g1) = loss_and_grads(cfg), loss_and_grads(cfg.replace(remat=True))
  assert_close(l1, l0)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    assert_close(a, b)


def test_bf16_compute_and_params_close_to_fp32():
  cfg = M.get_config("tiny")
  tokens, valid = np.ones((1, 5), np.int32) * 7, np.ones((1, 5), bool)
  ref = _forward(M.init_model(cfg), tokens, valid)
  m = M.init_model(cfg.replace(dtype="bfloat16", param_dtype="bfloat16"))
  assert m.layers[0].attn.q_proj.kernel[...].dtype == jnp.bfloat16
  out = _forward(m, tokens, valid)
  assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
  assert_close(out, ref, rtol=5e-2)  # bf16 weights and activations: ~2-3 significant digits


def test_llama3_rope_scaling_changes_only_low_frequencies():
  cfg = M.get_config("tiny", rope_theta=500000.0)
  scaled = cfg.replace(rope_scaling=M.RopeScaling(8.0, 1.0, 4.0, 64))
  base, inv = np.asarray(M.rope_inv_freq(cfg)), np.asarray(M.rope_inv_freq(scaled))
  wavelen = 2 * np.pi / base
  np.testing.assert_array_equal(inv[wavelen < 16], base[wavelen < 16])  # high freq: unchanged
  np.testing.assert_allclose(inv[wavelen > 64], base[wavelen > 64] / 8, rtol=1e-6)


def test_config_validation_and_dict_round_trip():
  with pytest.raises(ValueError, match="num_kv_heads"):
    M.get_config("tiny", num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="dtype"):
    M.get_config("tiny", dtype="float64")
  with pytest.raises(ValueError, match="architecture"):
    M.get_config("tiny", architecture="mistral")
  with pytest.raises(KeyError, match="known presets"):
    M.get_config("gpt5")
  cfg = M.get_config("llama3_8b", rope_scaling=M.RopeScaling(8.0, 1.0, 4.0, 8192))
  assert M.config_from_dict(M.config_to_dict(cfg)) == cfg
  with pytest.raises(ValueError, match="unknown ModelConfig field"):
    M.config_from_dict({**M.config_to_dict(cfg), "sliding_window": 4096})


@pytest.mark.parametrize("name,expected", [("smollm2_135m", 134_515_008),
                                           ("qwen2_5_0_5b", 494_032_768),
                                           ("llama3_8b", 8_030_261_248),
                                           ("llama2_7b", 6_738_415_616)])
def test_preset_param_counts_match_published(name, expected):
  assert M.get_config(name).num_params == expected


def _value_output_map(attn, num_heads, num_kv_heads, head_dim):
  """sum over query heads j of W_V[:, kv(j)] @ W_O[j]: the head-summed value->output map [D, D]."""
  wv, wo = np.asarray(attn.v_proj.kernel[...], np.float64), np.asarray(attn.o_proj.kernel[...],
                                                                       np.float64)
  g = num_heads // num_kv_heads
  return sum(wv[:, (j // g) * head_dim:(j // g + 1) * head_dim]
             @ wo[j * head_dim:(j + 1) * head_dim] for j in range(num_heads))


@pytest.mark.parametrize("num_kv_heads", [4, 2])  # K*H = D (identity), K*H = D/2 (projection)
def test_init_copy_heads_sets_value_output_map(num_kv_heads):
  cfg = M.get_config("tiny", num_kv_heads=num_kv_heads, num_layers=3)
  fresh = M.init_model(cfg, seed=0)
  m = M.init_copy_heads(M.init_model(cfg, seed=0), layers=(-1, 0), gain=2.5, seed=3)
  d, kh = cfg.hidden_size, num_kv_heads * cfg.head_dim
  for layer in (0, 2):
    ov = _value_output_map(m.layers[layer].attn, cfg.num_heads, num_kv_heads, cfg.head_dim)
    p = ov / 2.5  # gain * (a projection of rank min(D, K*H))
    assert_close(p, p.T)
    assert_close(p @ p, p)
    assert round(np.trace(p)) == min(d, kh)
    if kh == d:
      assert_close(p, np.eye(d))
  # Untouched: layer 1, the queries/keys/MLP of the copy layers, the embedding.
  for a, b in ((m.layers[1], fresh.layers[1]), (m.layers[0].mlp, fresh.layers[0].mlp),
               (m.layers[2].attn.q_proj, fresh.layers[2].attn.q_proj),
               (m.layers[2].attn.k_proj, fresh.layers[2].attn.k_proj)):
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
      np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(m.embed[...], fresh.embed[...])


def test_copy_head_with_uniform_attention_outputs_the_mean_of_its_inputs():
  """Zero queries make attention uniform over the causal prefix: a copy layer with gain g then
  outputs g * the mean of its inputs so far, position by position (float64 numpy reference)."""
  cfg = M.get_config("tiny", num_kv_heads=4)
  m = M.init_copy_heads(M.init_model(cfg, seed=0), layers=(1,), gain=1.5)
  attn = m.layers[1].attn
  attn.q_proj.kernel[...] = jnp.zeros_like(attn.q_proj.kernel[...])
  x_BxTxD = jax.random.normal(jax.random.key(0), (2, 6, cfg.hidden_size))
  valid = jnp.ones((2, 6), bool)
  sin, cos = M.rope_sin_cos(cfg, M.positions_from_mask(valid))
  out_BxTxD, _ = attn(x_BxTxD, sin, cos, M.causal_mask(valid))
  x = np.asarray(x_BxTxD, np.float64)
  want = 1.5 * np.cumsum(x, axis=1) / np.arange(1, 7)[None, :, None]
  assert_close(out_BxTxD, want)


def test_init_copy_heads_rejects_bad_layers_and_gain(tiny):
  with pytest.raises(ValueError, match="layer 2 is out of range for a 2-layer model"):
    M.init_copy_heads(tiny, layers=(2,))
  with pytest.raises(ValueError, match="gain=0"):
    M.init_copy_heads(tiny, layers=(0,), gain=0.0)
