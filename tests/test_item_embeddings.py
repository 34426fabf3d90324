"""Hybrid item embeddings (LLaRA, `config.model.item_embeddings="oracle"`): an item token's input
(a title token, or an item slot after a title's text) is its embedding row plus a learned
projection of the oracle's frozen item embedding."""

import json

from conftest import assert_close, context
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rosepo_jax import checkpoints, pipeline, train
from rosepo_jax import config as config_lib
from rosepo_jax import model as M
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.checkpoints import hf
from rosepo_jax.data import batching as B
from rosepo_jax.stages import negatives as negatives_stage
from test_hf import _batch, _ours, _theirs
from test_stages import _tiny

FIRST, COUNT, DIM = 200, 40, 12


def _hybrid(preset="tiny", seed=0):
  base = M.init_model(M.get_config(preset), seed=seed)
  table = np.random.RandomState(seed).normal(0, 1, (COUNT, DIM)).astype(np.float32)
  return base, M.add_item_embeddings(base, table, FIRST, seed=seed), table


def _gelu(x):  # jax.nn.gelu's default (tanh) form, written out
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("rows", [1, 8])  # 6 tokens < 40 items: their rows projected; 48: all
def test_title_tokens_gain_the_projected_item_embedding(rows):
  """embed_tokens = row + W2 gelu(W1 e + b1) + b2 on the item rows, the row alone elsewhere
  (float64 reference), whether the tokens' rows or the whole table is projected; the other
  parameters are the base model's."""
  base, model, table = _hybrid()
  tokens = np.array([[3, FIRST, FIRST + COUNT - 1, FIRST + COUNT, FIRST - 1, FIRST + 7]] * rows)
  got = np.asarray(model.embed_tokens(jnp.asarray(tokens)), np.float64)
  np.testing.assert_array_equal(got, np.stack([got[0]] * rows))
  f64 = lambda x: np.asarray(x[...], np.float64)  # pylint: disable=unnecessary-lambda-assignment
  embed = f64(model.embed)
  np.testing.assert_array_equal(embed, f64(base.embed))
  hidden = _gelu(table.astype(np.float64) @ f64(model.item_in.kernel) + f64(model.item_in.bias))
  projected = hidden @ f64(model.item_out.kernel) + f64(model.item_out.bias)
  want = embed[tokens[0]]
  for t, token in enumerate(tokens[0]):
    if FIRST <= token < FIRST + COUNT:
      want[t] += projected[token - FIRST]
  assert np.abs(projected).max() > 1e-3  # the projection matters
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


def test_the_projection_trains_and_the_item_table_stays_frozen():
  _, model, table = _hybrid()
  rows = [((3, 4, FIRST + i, FIRST + i + 1, 5), ((FIRST + i + 2, 2),)) for i in range(8)]
  batch = B.make_batch([B.EncodedRow(p, r) for p, r in rows], B.BatchShape(seq_multiple=16), 1)
  trainer = train.Trainer(model, train.sft_loss_fn(64), optax.adam(1e-2))
  names = {"/".join(map(str, k)) for k, _ in trainer.initial.params.flat_state()}
  assert "item_in/kernel" in names and "item_out/kernel" in names
  assert "item_table" not in names
  before = {k: np.asarray(v.get_value()) for k, v in trainer.initial.params.flat_state()
            if k[0] in ("item_in", "item_out")}
  state = trainer.initial
  for _ in range(3):
    state, _ = trainer.step(state, batch)
  trained = trainer.model(state.params)
  for key, value in before.items():
    after = np.asarray(dict(state.params.flat_state())[key].get_value())
    assert np.abs(after - value).max() > 0, key
  np.testing.assert_array_equal(np.asarray(trained.item_table[...]), table)


def test_under_lora_the_projection_trains_with_the_adapters():
  """With LoRA the projection and the adapters train; the backbone's weights and the item table
  stay; merging keeps the trained projection (the merged model computes the adapted one)."""
  base, hybrid, table = _hybrid()
  model = M.add_lora(hybrid, rank=4, alpha=8.0, seed=1, token_rows=(FIRST, COUNT))
  rows = [((3, 4, FIRST + i, FIRST + i + 1, 5), ((FIRST + i + 2, 2),)) for i in range(8)]
  batch = B.make_batch([B.EncodedRow(p, r) for p, r in rows], B.BatchShape(seq_multiple=16), 1)
  trainer = train.Trainer(model, train.sft_loss_fn(64), optax.adam(1e-2))
  names = {"/".join(map(str, k)) for k, _ in trainer.initial.params.flat_state()}
  assert {"item_in/kernel", "item_out/bias", "token_delta", "layers/0/attn/q_proj/lora_b"} <= names
  assert not names & {"item_table", "embed", "layers/0/attn/q_proj/kernel"}
  before = {k: np.asarray(v.get_value()) for k, v in trainer.initial.params.flat_state()}
  state = trainer.initial
  for _ in range(3):
    state, _ = trainer.step(state, batch)
  for key, value in dict(state.params.flat_state()).items():
    if key[0] in ("item_in", "item_out"):
      assert np.abs(np.asarray(value.get_value()) - before[key]).max() > 0, key
  trained = trainer.model(state.params)
  np.testing.assert_array_equal(np.asarray(trained.item_table[...]), table)
  np.testing.assert_array_equal(np.asarray(trained.embed[...]), np.asarray(base.embed[...]))
  tokens, valid, _ = _batch(vocab=256)
  tokens = np.where(np.arange(tokens.shape[1]) % 2 == 0, FIRST + tokens % COUNT, tokens)
  assert_close(_ours(M.merge_lora(trained), tokens, valid), _ours(trained, tokens, valid),
               where=valid)


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen2"])  # untied; tied (exported untied)
def test_export_folds_the_item_embeddings_into_plain_rows(preset, tmp_path):
  """The HF export is a plain model (no item table): transformers computes our hybrid model's
  logits (1e-5); a tied model comes back untied, its head the rows without the projection."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _, model, _ = _hybrid(preset)
  tokens, valid, positions = _batch(vocab=256)
  tokens = np.where(np.arange(tokens.shape[1]) % 2 == 0, FIRST + tokens % COUNT, tokens)
  hf.save_hf(model, str(tmp_path / "hf"))
  config = json.load(open(tmp_path / "hf" / "config.json"))
  assert config["tie_word_embeddings"] is False
  theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                             dtype=torch.float32).eval()
  assert_close(_theirs(theirs, tokens, valid, positions), _ours(model, tokens, valid), where=valid)


def test_hybrid_sft_reads_the_oracle_first(tmp_path):
  """Through the pipeline: the oracle runs before SFT, whose saved model holds the all-users
  oracle's item rows as its frozen table; the config refuses text titles without item slots,
  and item slots with title tokens. The same oracle rows can place the semantic negatives
  (negatives.semantic_embedding="oracle")."""
  config = _tiny(steps=2)
  config.methods = ("sft",)
  config.tokenizer.title_tokens = True
  config.oracle.folds = 1
  config.model.item_embeddings = "oracle"
  config.negatives.semantic_embedding = "oracle"
  ran = pipeline.run(config, str(tmp_path), ["data", "oracle", "sft"])
  assert list(ran) == ["data", "oracle", "sft"]
  ctx = context(config, tmp_path)
  order = [s.name for s in pipeline.stage_order(ctx.config)]
  assert order.index("oracle") < order.index("sft")
  sft_model = checkpoints.load_orbax(ctx.paths.model("sft"))
  oracle_rows = oracle_lib.load_oracle(ctx.paths.oracle_model).model.item_embed[...]
  np.testing.assert_array_equal(np.asarray(sft_model.item_table[...]),
                                np.asarray(oracle_rows)[:ctx.dataset.num_items])
  assert sft_model.cfg.item_rows == (ctx.codec.title_offset, ctx.dataset.num_items)
  rows = np.asarray(oracle_rows, np.float64)[:ctx.dataset.num_items]
  np.testing.assert_allclose(negatives_stage.semantic_embeddings(ctx, sft_model),
                             rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-5,
                             atol=1e-7)
  bad = _tiny()
  bad.model.item_embeddings = "oracle"
  with pytest.raises(config_lib.ConfigError, match="item_embeddings='oracle' needs a token per "
                     "item"):
    config_lib.parse(bad)
  bad.tokenizer.update(title_tokens=True, item_slots=True)
  with pytest.raises(config_lib.ConfigError, match="item_slots=True follows each title's text"):
    config_lib.parse(bad)


def test_item_slots_carry_the_hybrid_embedding_after_each_title_text(tmp_path):
  """Titles as text with item slots (`tokenizer.item_slots`, LLaRA's hybrid prompt): every prompt
  holds one item token per shown title, after its text; SFT's model adds the oracle's projected
  item embedding to those tokens; answers are text and evaluate; the export (projection folded
  into the slot rows) computes our logits on a prompt in transformers."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = _tiny(steps=2)
  config.methods = ("sft",)
  config.tokenizer.item_slots = True
  config.oracle.folds = 1
  config.model.item_embeddings = "oracle"
  config.eval.max_examples = 8
  pipeline.run(config, str(tmp_path), ["data", "oracle", "sft", "eval", "export"])
  ctx = context(config, tmp_path)
  codec, offset = ctx.codec, ctx.codec.title_offset
  assert codec.slots and not codec.title_tokens
  examples = ctx.dataset.examples("train", 5)
  for ex, (prompt, response) in zip(examples, ctx.encoded_examples("train", 5)):
    shown = list(ex.history) + list(ex.candidates)
    assert [i - offset for i in prompt if i >= offset] == shown
    assert response == codec.title_text_ids(ex.target_title) + (codec.eos_token_id,)
  model = checkpoints.load_orbax(ctx.paths.model("sft"))
  assert model.cfg.item_rows == (offset, ctx.dataset.num_items)
  assert json.load(open(tmp_path / "eval" / "sft.json"))["num_examples"] == 8
  prompt = np.array([ctx.encoded_examples("test", 1)[0][0]])
  valid = np.ones_like(prompt, bool)
  positions = np.broadcast_to(np.arange(prompt.shape[1]), prompt.shape)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "export" / "sft"), dtype=torch.float32).eval()
  assert_close(_theirs(theirs, prompt, valid, positions), _ours(model, prompt, valid), where=valid)
  without = np.where(prompt >= offset, codec.eos_token_id, prompt)  # the slots matter
  assert np.abs(_ours(model, without, valid) - _ours(model, prompt, valid)).max() > 1e-3
