"""LoRA adapters exported as a PEFT folder load with peft on the base model's HF export and compute
what our adapted model computes (fp32, 1e-5 relative to the largest logit)."""

import json

from conftest import assert_close
import jax.numpy as jnp
import numpy as np
import pytest

from rosepo_jax import model as M
from rosepo_jax import pipeline
from rosepo_jax.checkpoints import hf, peft as peft_lib
from test_hf import _batch, _ours, _theirs
from test_stages import _tiny

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _trained_lora(seed=3):
  """The tiny preset with LoRA (rank 4, alpha 8) whose adapters hold random, non-zero values."""
  base = M.init_model(M.get_config("tiny"), seed=seed)
  lora = M.add_lora(base, rank=4, alpha=8.0, seed=seed)
  rs = np.random.RandomState(seed)
  for layer in lora.layers:
    for proj in (layer.attn.q_proj, layer.attn.v_proj, layer.mlp.down_proj):
      proj.lora_b[...] = jnp.asarray(rs.normal(0, 0.05, proj.lora_b[...].shape), jnp.float32)
  return base, lora


def test_peft_adapter_on_the_base_export_computes_our_adapted_model(tmp_path):
  base, lora = _trained_lora()
  hf.save_hf(base, str(tmp_path / "base"))
  peft_lib.save_adapter(lora, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
  config = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
  assert config["r"] == 4 and config["lora_alpha"] == 8.0
  assert config["base_model_name_or_path"] == str(tmp_path / "base")
  theirs = peft.PeftModel.from_pretrained(
      transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"),
                                                        dtype=torch.float32),
      str(tmp_path / "adapter")).eval()
  tokens, valid, positions = _batch(vocab=256)
  ours = _ours(lora, tokens, valid)
  assert np.abs(ours - _ours(base, tokens, valid)).max() > 1e-3  # the adapters matter
  assert_close(_theirs(theirs, tokens, valid, positions), ours, where=valid)
  assert_close(_ours(M.merge_lora(lora), tokens, valid), ours, where=valid)


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2"])  # untied head; tied
def test_title_rows_under_lora_load_in_peft_as_trainable_tokens(preset, tmp_path):
  """Token rows that train with the adapters (title tokens): peft's trainable_token_indices on the
  base export computes our adapted model (their rows, not deltas, over the base's), and so does
  the merged model; the adapters off (B and deltas zero) give the base model back."""
  base = M.init_model(M.get_config(preset), seed=2)
  first, count = 200, 40
  lora = M.add_lora(base, rank=4, alpha=8.0, seed=2, token_rows=(first, count))
  rs = np.random.RandomState(0)
  deltas = [lora.token_delta] + ([lora.head_token_delta] if lora.lm_head is not None else [])
  assert (lora.head_token_delta is None) == (preset == "tiny_qwen2")
  for delta in deltas:
    delta[...] = jnp.asarray(rs.normal(0, 0.1, delta[...].shape), jnp.float32)
  tokens, valid, positions = _batch(vocab=256)
  tokens = np.where(np.arange(tokens.shape[1]) % 3 == 0, first + tokens % count, tokens)
  ours = _ours(lora, tokens, valid)
  assert np.abs(ours - _ours(base, tokens, valid)).max() > 1e-2  # the rows matter
  hf.save_hf(base, str(tmp_path / "base"))
  peft_lib.save_adapter(lora, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
  config = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
  want = {"embed_tokens": list(range(first, first + count))}
  if preset == "tiny":
    want["lm_head"] = want["embed_tokens"]
  assert config["trainable_token_indices"] == want
  theirs = peft.PeftModel.from_pretrained(
      transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"),
                                                        dtype=torch.float32),
      str(tmp_path / "adapter")).eval()
  assert_close(_theirs(theirs, tokens, valid, positions), ours, where=valid)
  merged = M.merge_lora(lora)
  assert merged.cfg.lora_token_rows == (0, 0)
  assert_close(_ours(merged, tokens, valid), ours, where=valid)
  for delta in deltas:
    delta[...] = jnp.zeros_like(delta[...])
  np.testing.assert_array_equal(_ours(lora, tokens, valid), _ours(base, tokens, valid))


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2"])  # untied head; tied
def test_hybrid_item_embeddings_under_lora_load_in_peft(preset, tmp_path):
  """Hybrid item embeddings under LoRA: the adapter's input title rows carry the projected item
  embeddings and its head rows do not; on the base without the projection (its head untied)
  peft computes our adapted hybrid model (1e-5)."""
  first, count, dim = 200, 40, 12
  base = M.init_model(M.get_config(preset), seed=2)
  table = np.random.RandomState(1).normal(0, 1, (count, dim)).astype(np.float32)
  hybrid = M.add_item_embeddings(base, table, first, seed=2)
  lora = M.add_lora(hybrid, rank=4, alpha=8.0, seed=2, token_rows=(first, count))
  rs = np.random.RandomState(0)
  for delta in (lora.token_delta, lora.head_token_delta):
    if delta is not None:
      delta[...] = jnp.asarray(rs.normal(0, 0.1, delta[...].shape), jnp.float32)
  lora.layers[0].attn.q_proj.lora_b[...] = jnp.asarray(
      rs.normal(0, 0.05, lora.layers[0].attn.q_proj.lora_b[...].shape), jnp.float32)
  tokens, valid, positions = _batch(vocab=256)
  tokens = np.where(np.arange(tokens.shape[1]) % 3 == 0, first + tokens % count, tokens)
  ours = _ours(lora, tokens, valid)
  hf.save_hf(M.untie_head(base), str(tmp_path / "base"))
  peft_lib.save_adapter(lora, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
  indices = list(range(first, first + count))
  assert json.load(open(tmp_path / "adapter" / "adapter_config.json"))[
      "trainable_token_indices"] == {"embed_tokens": indices, "lm_head": indices}
  theirs = peft.PeftModel.from_pretrained(
      transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"),
                                                        dtype=torch.float32),
      str(tmp_path / "adapter")).eval()
  assert_close(_theirs(theirs, tokens, valid, positions), ours, where=valid)


def test_adapter_tensors_are_the_transposed_factors():
  _, lora = _trained_lora()
  tensors = peft_lib.adapter_tensors(lora)
  q = lora.layers[1].attn.q_proj
  prefix = "base_model.model.model.layers.1.self_attn.q_proj"
  np.testing.assert_array_equal(tensors[prefix + ".lora_A.weight"], np.asarray(q.lora_a[...]).T)
  np.testing.assert_array_equal(tensors[prefix + ".lora_B.weight"], np.asarray(q.lora_b[...]).T)
  assert len(tensors) == 2 * 7 * lora.cfg.num_layers  # every projection of every layer


@pytest.mark.parametrize("hybrid", [False, True])
def test_lora_runs_export_their_adapters_on_their_bases(hybrid, tmp_path):
  """A LoRA pipeline (SFT and DPO with LoRA, from scratch): each run's export holds its adapters
  as a PEFT folder naming its base (SFT: the backbone's export; DPO: the SFT export); base +
  adapter in peft computes the run's merged export in transformers. With hybrid item embeddings
  (titles as tokens) too: the projection trained in SFT reaches both exports, and DPO's adapters
  apply to the SFT model with the projection folded into its rows (online reference included)."""
  config = _tiny(steps=2)
  config.methods = ("sft", "dpo")
  config.model.lora_rank = 4
  stages = ["data", "sft", "dpo", "export"]
  if hybrid:
    config.tokenizer.title_tokens = True
    config.model.item_embeddings = "oracle"
    config.oracle.folds = 1
    config.sft.optim.learning_rate = 1e-2
    config.preference.reference = "online"  # the adapters-off model: the folded SFT model
    config.model.overrides.tie_word_embeddings = True  # the SFT adapter's base is untied
    stages.insert(1, "oracle")
  pipeline.run(config, str(tmp_path), stages)
  export = tmp_path / "export"
  tokens, valid, positions = _batch(vocab=256)
  if hybrid:
    stats = json.load(open(tmp_path / "data" / "stats.json"))["tokenizer"]
    first, count = stats["subwords"], stats["title_tokens"]
    tokens = np.where(np.arange(tokens.shape[1]) % 2 == 0, first + tokens % count, tokens)
  for run, base in (("sft", export / "sft" / "base"), ("dpo", export / "sft")):
    adapter = export / run / "adapter"
    assert json.load(open(adapter / "adapter_config.json"))["base_model_name_or_path"] == str(base)
    load = lambda path: transformers.AutoModelForCausalLM.from_pretrained(  # pylint: disable=unnecessary-lambda-assignment
        str(path), dtype=torch.float32).eval()
    theirs = peft.PeftModel.from_pretrained(load(base), str(adapter)).eval()
    merged = _theirs(load(export / run), tokens, valid, positions)
    assert np.abs(merged - _theirs(load(base), tokens, valid, positions)).max() > 0
    assert_close(_theirs(theirs, tokens, valid, positions), merged, where=valid)


def test_title_rows_train_under_lora_and_reach_the_peft_adapter(tmp_path):
  """Titles as tokens with LoRA: the title rows train with the adapters (SFT's merged model
  differs from its base there and only there: every output row, since the softmax reaches each,
  and the input rows of the titles the prompts held), survive the merge into the export, and the
  SFT adapter on its base export (which has the title rows at their initial values) computes the
  merged export in peft."""
  config = _tiny(steps=3)
  config.methods = ("sft",)
  config.tokenizer.title_tokens = True
  config.model.lora_rank = 4
  config.sft.optim.learning_rate = 1e-2
  pipeline.run(config, str(tmp_path), ["data", "sft", "export"])
  export = tmp_path / "export"
  load = lambda path: transformers.AutoModelForCausalLM.from_pretrained(  # pylint: disable=unnecessary-lambda-assignment
      str(path), dtype=torch.float32).eval()
  base, merged = load(export / "sft" / "base"), load(export / "sft")
  stats = json.load(open(tmp_path / "data" / "stats.json"))["tokenizer"]
  first, count = stats["subwords"], stats["title_tokens"]
  changed = lambda get: (get(base).weight != get(merged).weight).any(1).numpy()  # pylint: disable=unnecessary-lambda-assignment
  inputs, outputs = (changed(lambda m: m.get_input_embeddings()),
                     changed(lambda m: m.get_output_embeddings()))
  assert outputs[first:first + count].all() and not outputs[:first].any()
  assert inputs[first:first + count].mean() > 0.5 and not inputs[:first].any()
  adapter = export / "sft" / "adapter"
  assert json.load(open(adapter / "adapter_config.json"))["trainable_token_indices"] == {
      "embed_tokens": list(range(first, first + count)),
      "lm_head": list(range(first, first + count))}
  rs = np.random.RandomState(0)
  tokens = rs.randint(first, first + count, (2, 12))
  valid = np.ones_like(tokens, bool)
  positions = np.broadcast_to(np.arange(12), tokens.shape)
  theirs = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
  assert_close(_theirs(theirs, tokens, valid, positions),
               _theirs(merged, tokens, valid, positions), where=valid)
