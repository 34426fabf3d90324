"""Hugging Face import/export: parity with transformers/torch, exact round trips, bad input."""

import json
import os

from conftest import assert_close
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import checkpoints as C
from rosepo_jax import model as M
from rosepo_jax.checkpoints import hf

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers")

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
CASES = {
    "llama_untied_llama3_rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                                 dict(tie_word_embeddings=False, rope_theta=500000.0,
                                      rope_scaling=LLAMA3_SCALING)),
    "llama_tied_attention_bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                                  dict(tie_word_embeddings=True, attention_bias=True)),
    "qwen2_tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                   dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_untied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                     dict(tie_word_embeddings=False)),
}


def _torch_model(case, seed=0):
  config_cls, model_cls, extra = CASES[case]
  torch.manual_seed(seed)
  model = model_cls(config_cls(**TINY, **extra)).eval()
  with torch.no_grad():  # HF inits biases/norms to 0/1: perturb everything
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def _batch(seed=0, b=3, t=12, vocab=128):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(3, vocab, (b, t)).astype(np.int32)
  valid = np.ones((b, t), bool)
  valid[0, :4] = False  # left padding
  valid[1, :1] = False
  return tokens, valid, np.maximum(np.cumsum(valid, 1) - 1, 0)


def _ours(model, tokens, valid):
  v = jnp.asarray(valid)
  return np.asarray(model(jnp.asarray(tokens), M.positions_from_mask(v), M.causal_mask(v))[0])


def _theirs(model, tokens, valid, positions):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(valid.astype(np.int64)),
                 position_ids=torch.tensor(positions)).logits.float().numpy()


def _params(model):
  return {k: np.asarray(v.get_value()) for k, v in nnx.state(model, nnx.Param).flat_state()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_transformers(case, tmp_path):
  ref = _torch_model(case)
  ref.save_pretrained(tmp_path)
  ours = hf.load_hf(str(tmp_path))
  tokens, valid, positions = _batch()
  assert_close(_ours(ours, tokens, valid), _theirs(ref, tokens, valid, positions), where=valid)


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2"])
def test_export_loads_in_transformers_and_round_trips_exactly(preset, tmp_path):
  ours = M.init_model(M.get_config(preset), seed=7)
  summary = hf.save_hf(ours, str(tmp_path / "export"))
  assert summary["shards"] == 1 and os.path.exists(tmp_path / "export" / "model.safetensors")
  theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export",
                                                             dtype=torch.float32).eval()
  tokens, valid, positions = _batch(vocab=256)
  assert_close(_theirs(theirs, tokens, valid, positions), _ours(ours, tokens, valid), where=valid)
  back = _params(hf.load_hf(str(tmp_path / "export")))
  for k, v in _params(ours).items():
    np.testing.assert_array_equal(back[k], v, err_msg=str(k))


def test_sharded_export_loads_in_transformers(tmp_path):
  ours = M.init_model(M.get_config("tiny"), seed=8)
  summary = hf.save_hf(ours, str(tmp_path / "x"), max_shard_bytes=40_000)
  assert summary["shards"] > 3
  index = json.load(open(tmp_path / "x" / "model.safetensors.index.json"))
  assert len(index["weight_map"]) == summary["tensors"]
  theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "x").eval()
  tokens, valid, positions = _batch(vocab=256)
  assert_close(_theirs(theirs, tokens, valid, positions), _ours(ours, tokens, valid), where=valid)
  back = _params(hf.load_hf(str(tmp_path / "x")))
  for k, v in _params(ours).items():
    np.testing.assert_array_equal(back[k], v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_safetensors_import_exactly(dtype, tmp_path):
  ref = _torch_model("qwen2_tied").to(dtype)
  ref.save_pretrained(tmp_path)
  ours = hf.load_hf(str(tmp_path))  # parameters default to float32
  assert ours.embed[...].dtype == jnp.float32
  want = ref.model.layers[1].self_attn.q_proj.weight.detach().float().numpy().T
  np.testing.assert_array_equal(np.asarray(ours.layers[1].attn.q_proj.kernel[...]), want)
  kept = hf.load_hf(str(tmp_path), param_dtype="bfloat16")
  assert kept.embed[...].dtype == jnp.bfloat16


def test_bf16_export_loads_in_transformers(tmp_path):
  ours = M.init_model(M.get_config("tiny"), seed=9)
  summary = hf.save_hf(ours, str(tmp_path / "b"), dtype="bfloat16")
  assert json.load(open(tmp_path / "b" / "config.json"))["torch_dtype"] == "bfloat16"
  # The rounding the summary reports, written out in float64 over every parameter.
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  values = [np.asarray(v.get_value(), np.float64)
            for _, v in nnx.state(ours, nnx.Param).flat_state()]
  errors = [np.abs(v.astype(ml_dtypes.bfloat16).astype(np.float64) - v) for v in values]
  want_rounding = {
      "max_abs_error": max(e.max() for e in errors),
      "max_relative_error": max(e.max() / np.abs(v).max() for e, v in zip(errors, values)),
      "elements_changed": sum((e > 0).sum() for e in errors) / sum(v.size for v in values)}
  assert summary["rounding"] == pytest.approx(want_rounding, rel=1e-12)
  assert 0.5 < want_rounding["elements_changed"] <= 1.0
  assert hf.save_hf(ours, str(tmp_path / "f"))["rounding"]["max_abs_error"] == 0.0
  theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b", dtype=torch.bfloat16)
  got = theirs.model.embed_tokens.weight.detach().float().numpy()
  want = np.asarray(ours.embed[...].astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(got, want)


def test_config_forms_transformers_4_and_5():
  v4 = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "eos_token_id": [5, 6]}
  v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
  v5["rope_parameters"] = {"rope_theta": 500000.0, **v4["rope_scaling"]}
  a, b = hf.config_from_hf(v4), hf.config_from_hf(v5)
  assert a == b and a.rope_theta == 500000.0 and a.rope_scaling.factor == 8.0
  assert a.num_kv_heads == 2 and a.head_dim == 4 and a.eos_token_ids == (5, 6)
  plain = dict(v5, rope_parameters={"rope_theta": 1e4, "rope_type": "default"})
  assert hf.config_from_hf(plain).rope_scaling is None
  # Our export form reads back to the same config.
  cfg = M.get_config("llama3_8b", rope_scaling=M.RopeScaling(8.0, 1.0, 4.0, 8192))
  assert hf.config_from_hf(hf.config_to_hf(cfg, "float32")) == cfg


@pytest.mark.parametrize("change,field", [
    ({"model_type": "mixtral"}, "model_type"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"layer_types": ["sliding_attention"]}, "layer_types"),
    ({"num_experts": 8}, "num_experts"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "rope_parameters.rope_type"),
    ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantization_config"),
])
def test_unsupported_config_fields_are_named(change, field):
  base = {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2}
  with pytest.raises(hf.UnsupportedConfigError, match=field.replace(".", r"\.")):
    hf.config_from_hf({**base, **change})


def test_missing_required_field_is_named():
  with pytest.raises(ValueError, match="'hidden_size' is missing"):
    hf.config_from_hf({"model_type": "llama", "vocab_size": 10})


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
  _torch_model("qwen2_tied").save_pretrained(tmp_path)
  config = json.load(open(tmp_path / "config.json"))
  config["intermediate_size"] = 100
  json.dump(config, open(tmp_path / "config.json", "w"))
  with pytest.raises(ValueError, match=r"model.layers.0.mlp.gate_proj.weight.*shape \(64, 96\), "
                     r"expected \(64, 100\)"):
    hf.load_hf(str(tmp_path))


def test_missing_files_and_tensors_are_listed(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf(str(tmp_path))
  _torch_model("qwen2_tied").save_pretrained(tmp_path)
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_hf(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not a model; expected a .gguf"):
    C.load_model(str(tmp_path / "nowhere"))
  # A checkpoint that lacks a tensor the config needs (untied head declared, none stored).
  _torch_model("qwen2_tied").save_pretrained(tmp_path)
  config = json.load(open(tmp_path / "config.json"))
  config["tie_word_embeddings"] = False
  json.dump(config, open(tmp_path / "config.json", "w"))
  with pytest.raises(ValueError, match="missing: lm_head.weight"):
    hf.load_hf(str(tmp_path))


def test_failed_export_leaves_nothing_behind(tmp_path):
  ours = M.init_model(M.get_config("tiny"))
  hf.save_hf(ours, str(tmp_path / "out"))
  before = open(tmp_path / "out" / "model.safetensors", "rb").read()
  with pytest.raises(FileNotFoundError, match="no tokenizer files"):
    hf.save_hf(M.init_model(M.get_config("tiny"), seed=5), str(tmp_path / "out"),
               tokenizer=str(tmp_path / "no_tokenizer_here"))
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp dirs left
  assert open(tmp_path / "out" / "model.safetensors", "rb").read() == before  # old one intact
  with pytest.raises(FileNotFoundError):
    hf.save_hf(ours, str(tmp_path / "new"), tokenizer=str(tmp_path / "no_tokenizer_here"))
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_tokenizer_travels_with_export(tmp_path):
  tok_dir = tmp_path / "tok"
  _tiny_tokenizer().save_pretrained(tok_dir)
  hf.save_hf(M.init_model(M.get_config("tiny")), str(tmp_path / "m"), tokenizer=str(tok_dir))
  loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
  assert loaded("ab ba")["input_ids"] == _tiny_tokenizer()("ab ba")["input_ids"]


def _tiny_tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers
  tok = Tokenizer(models.WordLevel({"<unk>": 0, "ab": 1, "ba": 2}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_a_truncated_weights_file_is_named(tmp_path):
  hf.save_hf(M.init_model(M.get_config("tiny")), str(tmp_path / "out"))
  path = tmp_path / "out" / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(hf.CheckpointFileError, match=f"{path}: not a complete safetensors file"):
    hf.load_hf(str(tmp_path / "out"))
