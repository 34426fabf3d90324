"""The whole pipeline on a tiny world: eval files, report, export, up-to-date markers, --force,
config changes, and resuming after SIGTERM."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO, context
import fake_gcs
import jax
import numpy as np
import pytest

from rosepo_jax import checkpoints, generate, losses, methods, pipeline, scoring, staging
from rosepo_jax import oracle as O
from rosepo_jax.checkpoints import params as params_lib
from rosepo_jax import config as config_lib
from rosepo_jax.data import synthetic
from rosepo_jax.data.codec import Codec
from rosepo_jax.data.candidates import subset_indices
from rosepo_jax.stages import eval as eval_stage
from rosepo_jax.stages import preference, report
from rosepo_jax.workdir import Unit, read_records
from test_stages import _tiny

EVAL_KEYS = ("hit_ratio@1", "valid_ratio", "valid_ratio_substring", "hit_ratio@1_valid",
             "pop_mean_percentile", "head_ratio", "coverage", "target_pop_mean_percentile",
             "target_head_ratio", "rank_hit_ratio@1", "rank_hit_ratio@5", "rank_hit_ratio@10",
             "rank_ndcg@5", "rank_ndcg@10", "num_examples")


def _config():
  return _tiny()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  outcome = pipeline.run(_config(), workdir, ["all"])
  return workdir, outcome


def test_all_stages_write_their_outputs(finished_run):
  workdir, outcome = finished_run
  assert set(outcome.values()) == {"ran"}
  assert list(outcome) == ["data", "sft", "oracle", "negatives", "dpo/dpo", "dpo/rosepo",
                           "eval/sft", "eval/dpo", "eval/rosepo", "export/sft", "export/dpo",
                           "export/rosepo", "report"]
  for run in ("sft", "dpo", "rosepo"):
    summary, predictions = json.load(open(os.path.join(workdir, "eval", f"{run}.json"))), [
        json.loads(line) for line in open(os.path.join(workdir, "eval",
                                                       f"{run}.predictions.jsonl"))]
    assert set(EVAL_KEYS) <= set(summary) and summary["num_examples"] == 24 == len(predictions)
    # The figures can be recomputed from the predictions alone.
    assert summary["hit_ratio@1"] == pytest.approx(np.mean([p["hit"] for p in predictions]))
    assert summary["valid_ratio"] == pytest.approx(np.mean([p["valid"] for p in predictions]))
    rank_N = np.array([p["rank"] for p in predictions])
    assert ((0 <= rank_N) & (rank_N < len(predictions[0]["candidates"]))).all()
    assert summary["rank_hit_ratio@1"] == pytest.approx(np.mean(rank_N == 0))
    assert summary["rank_ndcg@10"] == pytest.approx(
        np.mean(np.where(rank_N < 10, 1 / np.log2(rank_N + 2.0), 0.0)))
    for p in predictions:
      assert {"prompt", "candidates", "target", "answer", "valid", "hit"} <= set(p)
      assert p["prompt"].endswith("Answer:") and p["target"] in p["candidates"]
      assert p["valid"] == any(p["answer"].casefold() == c.casefold() for c in p["candidates"])
  report = open(os.path.join(workdir, "report.md")).read()
  for run in ("sft", "dpo", "rosepo"):
    assert f"| {run} |" in report
  # The synthetic world's Bayes ceiling on the runs' rows: max_c p_c / sum_c p_c of the true
  # probabilities of each row's candidates, at least every run's HitRatio@1.
  config = _config()
  truth = synthetic.world_truth(config_lib.parse(config).data.world, config.data.seed,
                                config.data.min_history, config.data.max_history)["test"]
  ctx = context(config, workdir)
  rows = ctx.dataset.examples_at("test", [p["index"] for p in predictions])
  p_NxC = np.array([truth[ex.index][list(ex.candidates)] for ex in rows], np.float64)
  reference = json.load(open(os.path.join(workdir, "eval", "summary.json")))["reference"]
  ceiling = reference["bayes ceiling (the world's true probabilities), the runs' rows"]
  assert ceiling["examples"] == 24 and ceiling["hit_ratio@1"] == pytest.approx(
      np.mean(p_NxC.max(1) / p_NxC.sum(1)), rel=1e-6)
  for run in ("sft", "dpo", "rosepo"):
    assert ceiling["hit_ratio@1"] >= json.load(open(os.path.join(
        workdir, "eval", f"{run}.json")))["hit_ratio@1"]
  assert "bayes ceiling" in report and "SASRec oracle, the whole test split" in report
  # SASRec on the runs' rows: the all-users oracle's top candidate, ties against the target.
  sasrec = O.load_oracle(os.path.join(workdir, "oracle", "model"))
  scores_NxC = sasrec.scores([ex.history for ex in rows], np.array([ex.candidates for ex in rows]))
  target_N = np.array([list(ex.candidates).index(ex.target) for ex in rows])
  top = (scores_NxC >= scores_NxC[np.arange(len(rows)), target_N][:, None]).sum(1) == 1
  assert reference["SASRec oracle, the runs' rows"] == {"hit_ratio@1": pytest.approx(top.mean()),
                                                        "examples": 24}
  assert "SASRec oracle, the runs' rows" in report
  assert sorted(os.listdir(os.path.join(workdir, "plots"))) == ["eps.png", "popularity.png",
                                                                "training.png"]


def test_eval_subset_figures_are_the_figures_of_their_rows(finished_run):
  workdir, _ = finished_run
  ctx = context(_config(), workdir)
  drawn = [int(i) for i in subset_indices(ctx.dataset.size("test"), 24, ctx.config.data.seed,
                                          "test")]  # the 24 examples evaluate_model draws
  not_drawn = next(i for i in range(ctx.dataset.size("test")) if i not in drawn)
  picked = [drawn[1], drawn[5], drawn[7]]
  ctx.dataset.eval_subsets = {"test": {"every": drawn, "some": picked + [not_drawn]}}
  model = checkpoints.load_orbax(ctx.paths.model("sft"))
  figures, predictions = eval_stage.evaluate_model(ctx, model, "test", 24)
  assert sorted(p["index"] for p in predictions) == drawn
  every, some = figures["subsets"]["every"], figures["subsets"]["some"]
  assert every == {k: v for k, v in figures.items() if k != "subsets"}
  rows = [p for p in predictions if p["index"] in picked]
  assert some["num_examples"] == 3
  assert some["hit_ratio@1"] == pytest.approx(np.mean([p["hit"] for p in rows]))
  assert some["valid_ratio"] == pytest.approx(np.mean([p["valid"] for p in rows]))
  assert set(EVAL_KEYS) <= set(some)
  # SASRec's reference figures on the runs' rows of each subset: "some" without its undrawn row.
  points = report.reference_points(ctx, predictions, "test")
  sasrec = O.load_oracle(ctx.paths.oracle_model)
  assert points["SASRec oracle, the runs' rows of subset some"] == {
      "hit_ratio@1": sasrec.evaluate(ctx.dataset.examples_at("test", picked))["hit_ratio@1"],
      "examples": 3}
  assert (points["SASRec oracle, the runs' rows of subset every"]
          == points["SASRec oracle, the runs' rows"])


def test_eval_decoding_restricted_to_the_candidates(finished_run, tmp_path):
  """eval.decoding="candidates": only the eval units and the report rerun, every answer is one
  of its prompt's candidate titles (the few-step model's free answers mostly are not), the
  figures and the report say so; a max_new_tokens too short for a title is a clear error."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_run[0], workdir)
  config = _config()
  config.eval.update(decoding="candidates", max_new_tokens=32)
  outcome = pipeline.run(config, workdir, ["all"])
  assert sorted(k for k, v in outcome.items() if v == "ran") == [
      "eval/dpo", "eval/rosepo", "eval/sft", "report"]
  free = json.load(open(os.path.join(finished_run[0], "eval", "sft.json")))
  assert free["decoding"] == "free" and free["valid_ratio"] < 0.5
  for run in ("sft", "dpo", "rosepo"):
    summary = json.load(open(os.path.join(workdir, "eval", f"{run}.json")))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "eval",
                                                            f"{run}.predictions.jsonl"))]
    assert summary["decoding"] == "candidates" and summary["valid_ratio"] == 1.0
    assert all(p["answer"] in p["candidates"] and p["valid"] for p in rows)
    assert summary["hit_ratio@1"] == pytest.approx(
        np.mean([p["answer"] == p["target"] for p in rows]))
  assert "restricted to the prompt's candidates" in open(os.path.join(workdir, "report.md")).read()
  config.eval.max_new_tokens = 2
  ctx = context(config, workdir)
  with pytest.raises(ValueError, match="config.eval.max_new_tokens=2 is shorter than the "
                     "candidate"):
    eval_stage.evaluate_model(ctx, checkpoints.load_orbax(ctx.paths.model("sft")), "test", 8)


def test_rerun_is_up_to_date_and_changes_rerun_downstream(finished_run, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_run[0], workdir)
  config = _config()
  outcome = pipeline.run(config, workdir, ["all"])
  assert set(outcome.values()) == {"up to date"}
  config.preference.beta = 0.5  # only preference training and what follows it are stale
  outcome = pipeline.run(config, workdir, ["all"])
  ran = sorted(k for k, v in outcome.items() if v == "ran")
  assert ran == ["dpo/dpo", "dpo/rosepo", "eval/dpo", "eval/rosepo", "export/dpo",
                 "export/rosepo", "report"]
  outcome = pipeline.run(config, workdir, ["oracle"], force=True)
  assert outcome == {"oracle": "ran"}
  outcome = pipeline.run(config, workdir, ["all"])
  ran = sorted(k for k, v in outcome.items() if v == "ran")
  assert ran == ["dpo/rosepo", "eval/rosepo", "export/rosepo", "negatives", "report"]


def _tree(folder: str) -> set[str]:
  return {os.path.relpath(os.path.join(root, f), folder)
          for root, _, names in os.walk(folder) for f in names}


def test_a_gs_workdir_runs_every_stage_to_the_figures_of_a_local_one(finished_run, tmp_path,
                                                                    monkeypatch):
  """--workdir=gs://...: every file of ours goes through epath's fsspec backend (`fake_gcs`, a
  bucket kept in a local folder); orbax and tensorboardX, which open gs:// themselves, get that
  folder's path."""
  local_run, _ = finished_run
  store = str(tmp_path / "store")
  fake_gcs.install(monkeypatch, store, native=True)
  monkeypatch.chdir(tmp_path)  # a gs:// path used as a local one would appear here as gs:/
  url = "gs://bucket/run"
  outcome = pipeline.run(_config(), url, ["all"])
  assert outcome == finished_run[1]
  remote_run = fake_gcs.local_path(store, url)
  for run in ("sft", "dpo", "rosepo"):
    ours, theirs = (json.load(open(os.path.join(d, "eval", f"{run}.json")))
                    for d in (remote_run, local_run))
    for key in EVAL_KEYS:
      assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), (run, key)
    assert (open(os.path.join(remote_run, "eval", f"{run}.predictions.jsonl")).read()
            == open(os.path.join(local_run, "eval", f"{run}.predictions.jsonl")).read())
    folder = os.path.join("export", run)
    assert _tree(os.path.join(remote_run, folder)) == _tree(os.path.join(local_run, folder))
    ours, theirs = (checkpoints.load_model(os.path.join(d, folder))
                    for d in (remote_run, local_run))
    for (name, a), (_, b) in zip(params_lib.iter_tensors(ours), params_lib.iter_tensors(theirs)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=f"{run}: {name.hf}")
  # Every file but orbax's and TensorBoard's (named by content or time) is in both run folders.
  ours_only = lambda d: {f for f in _tree(d)  # pylint: disable=unnecessary-lambda-assignment
                         if not {"checkpoints", "params", "tb"} & set(f.split(os.sep))}
  assert ours_only(remote_run) == ours_only(local_run)
  assert set(pipeline.run(_config(), url, ["all"]).values()) == {"up to date"}
  assert not os.path.exists(tmp_path / "gs:")


def test_export_loads_in_transformers_and_answers_like_ours(finished_run):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM, AutoTokenizer  # pylint: disable=g-import-not-at-top
  workdir, _ = finished_run
  folder = os.path.join(workdir, "export", "rosepo")
  theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  tok = AutoTokenizer.from_pretrained(folder)
  ours = checkpoints.load_orbax(os.path.join(workdir, "rosepo", "model"))
  ctx = context(_config(), workdir)  # prompts encoded by the exported tokenizer
  codec = Codec(tok)
  prompt_ids = codec.encode_prompts([ctx.example_pieces("test", ex)
                                     for ex in ctx.dataset.examples("test", 20)])
  answers = generate.greedy_answers(ours, codec, prompt_ids, 8, 6)
  for ids, answer in zip(prompt_ids, answers):
    out = theirs.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, len(ids):], skip_special_tokens=True).strip() == answer


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from rosepo_jax import pipeline
import test_pipeline
pipeline.run(test_pipeline._resume_config(), {workdir!r}, ["all"])
"""


def _resume_config():
  config = _config()
  config.methods = ("sft", "dpo")
  config.preference.update(steps=40, checkpoint_every=5)
  return config


def test_sigterm_during_preference_training_resumes_to_the_same_result(tmp_path):
  straight = str(tmp_path / "straight")
  pipeline.run(_resume_config(), straight, ["all"])
  # The killed run starts from a copy of the finished upstream stages (data, sft, negatives,
  # oracle: up to date there) without the dpo unit, so it spends its time in preference training.
  killed = str(tmp_path / "killed")
  shutil.copytree(straight, killed)
  dpo = Unit("dpo", "dpo")
  paths = context(_resume_config(), killed).paths
  shutil.rmtree(paths.run("dpo"))
  for path in (paths.eval_summary("dpo"), paths.eval_predictions("dpo"), paths.marker(dpo)):
    os.remove(path)
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(
      [sys.executable, "-c", _KILL_SCRIPT.format(tests=os.path.join(REPO, "tests"),
                                                 workdir=killed)],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = os.path.join(killed, ".staging", "dpo.dpo", "new", "dpo", "checkpoints")  # beside DIR/dpo
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    steps = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
    if any(int(d) >= 10 for d in steps):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=60)
  assert pipeline.read_marker(context(_resume_config(), killed), dpo) is None  # not finished
  assert staging.read_state(paths.staging(dpo))["status"] == "running"
  assert not os.path.exists(paths.run("dpo"))  # nothing swapped in yet
  outcome = pipeline.run(_resume_config(), killed, ["all"])
  assert outcome["sft"] == "up to date" and outcome["dpo/dpo"] == outcome["eval/dpo"] == "ran"
  metrics = [json.loads(line) for line in open(os.path.join(killed, "dpo", "metrics.jsonl"))]
  assert metrics[0]["step"] == 1 and metrics[-1]["step"] == 40
  a = json.load(open(os.path.join(straight, "eval", "dpo.json")))
  b = json.load(open(os.path.join(killed, "eval", "dpo.json")))
  assert {k: v for k, v in a.items() if k != "seconds"} == \
      {k: v for k, v in b.items() if k != "seconds"}
  pa = checkpoints.load_orbax(os.path.join(straight, "dpo", "model"))
  pb = checkpoints.load_orbax(os.path.join(killed, "dpo", "model"))
  np.testing.assert_array_equal(np.asarray(pa.embed[...]), np.asarray(pb.embed[...]))


def _copy(finished_run, tmp_path, name="copy") -> str:
  workdir = str(tmp_path / name)
  shutil.copytree(finished_run[0], workdir)
  return workdir


def test_a_new_method_is_one_row_and_its_loss(finished_run, tmp_path, monkeypatch):
  """SLiC's hinge max(0, 1 - h), written here, becomes a method with one row of the table; no
  stage module changes. At the first step the policy is pi_ref (h = 0), so its loss is 1."""
  def hinge(h_BxK, eps_BxK, beta):
    del eps_BxK, beta
    return jax.nn.relu(1.0 - h_BxK)

  monkeypatch.setitem(methods.METHODS, "hinge_added", methods.Method(losses.pairwise(hinge)))
  workdir = _copy(finished_run, tmp_path)
  config = _config()
  config.methods = ("sft", "dpo", "rosepo", "hinge_added")
  config.preference.steps = 2
  outcome = pipeline.run(config, workdir, ["dpo"])
  assert outcome == {"dpo/dpo": "ran", "dpo/rosepo": "ran", "dpo/hinge_added": "ran"}  # steps
  log = [json.loads(line) for line in open(os.path.join(workdir, "hinge_added", "metrics.jsonl"))]
  assert [r["step"] for r in log] == [1, 2]
  assert log[0]["loss"] == pytest.approx(1.0, abs=1e-4)
  assert os.path.isdir(os.path.join(workdir, "hinge_added", "model"))


def test_sft_rerun_gives_dpo_the_new_reference(finished_run, tmp_path):
  """After SFT reruns (another learning rate), dpo's reference log-probs are the new SFT model's:
  its unit owns them (DIR/dpo/reference.npz) and reruns clean."""
  workdir = _copy(finished_run, tmp_path)
  config = _config()
  config.methods = ("sft", "dpo")
  config.sft.optim.learning_rate = 3e-3
  outcome = pipeline.run(config, workdir, ["sft", "dpo"])
  assert outcome == {"sft": "ran", "dpo/dpo": "ran"}
  ctx = context(config, workdir)
  rows, _ = preference.random_pairs(ctx, "dpo", 1, with_reference=False)
  fresh = scoring.score_responses(checkpoints.load_orbax(ctx.paths.model("sft")), rows,
                                  batch_size=4, shape=ctx.batch_shape, vocab_chunk=64)
  stored = np.load(ctx.paths.reference("dpo"))["ref_logps"]
  np.testing.assert_allclose(stored, fresh, rtol=1e-5)
  old = np.load(os.path.join(finished_run[0], "dpo", "reference.npz"))["ref_logps"]
  assert np.abs(stored - old).max() > 1e-3  # the old SFT model's would differ

  # rosepo configured, negatives not asked for: its pairs are the old SFT model's, so stop.
  config.methods = ("sft", "dpo", "rosepo")
  with pytest.raises(pipeline.StaleInputError, match=r"dpo/rosepo would read negatives, which is "
                     r"out of date .*add negatives to --stages"):
    pipeline.run(config, workdir, ["sft", "dpo"])
  assert pipeline.run(config, workdir, ["negatives", "dpo"]) == {
      "negatives": "ran", "dpo/dpo": "up to date", "dpo/rosepo": "ran"}


def test_changing_tau_rescores_pairs_without_retraining_the_oracle(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  config = _config()
  ctx = context(config, workdir)
  before = read_records(ctx.paths.pairs)
  oracle_files = {f: os.path.getmtime(os.path.join(ctx.paths.oracle_model, f))
                  for f in os.listdir(ctx.paths.oracle_model)}
  config.smoothing.update(tau=0.25, fit_tau=False)
  outcome = pipeline.run(config, workdir, ["oracle", "negatives"])
  assert outcome == {"oracle": "up to date", "negatives": "ran"}
  assert oracle_files == {f: os.path.getmtime(os.path.join(ctx.paths.oracle_model, f))
                          for f in os.listdir(ctx.paths.oracle_model)}
  after = read_records(ctx.paths.pairs)
  assert [(p["example"], p["strategy"], p["rejected"]) for p in before] == \
      [(p["example"], p["strategy"], p["rejected"]) for p in after]
  # eps is the formula of METHOD.md section 4 at the new tau, over the same oracles' scores:
  # each pair's from the fold oracle of its user, which never trained on that user.
  examples = {e.index: e for e in ctx.dataset.examples("train")}
  folds = json.load(open(ctx.paths.oracle_folds))
  user_fold = {int(u): k for u, k in folds["user_fold"].items()}
  assert folds["folds"] == 3 and sorted(set(user_fold.values())) == [0, 1, 2]
  assert user_fold.keys() == {e.user for e in examples.values()}
  trained_on = json.load(open(ctx.paths.oracle_metrics))["fold_oracles"]
  for k in range(3):  # fold oracle k trained on the examples of the users outside fold k
    assert trained_on[k]["train_examples"] == sum(user_fold[e.user] != k
                                                  for e in examples.values())
  scored = [p for p in after if p["strategy"] in ("random", "popularity", "self_hard")]
  assert scored and all(p["oracle_fold"] == user_fold[examples[p["example"]].user] for p in scored)
  assert all(p["oracle_fold"] == -1 for p in after if p not in scored)
  s = np.zeros((len(scored), 2), np.float32)
  for k in range(3):
    rows = [i for i, p in enumerate(scored) if p["oracle_fold"] == k]
    fold_oracle = O.load_oracle(ctx.paths.oracle_fold_model(k))
    s[rows] = fold_oracle.scores(
        [examples[scored[i]["example"]].history for i in rows],
        np.array([[examples[scored[i]["example"]].target, scored[i]["rejected_item"]]
                  for i in rows]))
  want = np.clip(1.0 / (1.0 + np.exp(-(s[:, 1].astype(np.float64) - s[:, 0]) / 0.25)), 0.0, 0.45)
  np.testing.assert_allclose([p["eps"] for p in scored], want, rtol=1e-5, atol=1e-7)
  assert any(abs(a["eps"] - b["eps"]) > 1e-4 for a, b in zip(before, after))
  # smoothing.fit_tau: the oracle stage's maximum-likelihood tau (calibration.json), no retraining.
  calibration = json.load(open(ctx.paths.oracle_calibration))
  assert calibration["nll"]["fitted"] <= calibration["nll"]["tau_1"]
  # tau is fitted for the scorers of the pairs: the synthetic world's validation users have no
  # training example, so each is scored by the fold oracle of a seeded fold of the validation
  # users (every fold oracle is out-of-sample for them), and one tau is fitted on the pooled
  # scores (written out here with the fold oracles).
  val = ctx.dataset.examples("val")
  assert not {e.user for e in val} & set(user_fold)
  assert calibration["scored_by"] == {"fold_oracles": len(val), "oracle": 0}
  assert calibration["folds"] == 3 and sum(calibration["scored_by_fold"]) == len(val)
  assert min(calibration["scored_by_fold"]) > 0
  val_fold = O.user_folds([e.user for e in val], 3, config.oracle.seed)
  pooled = np.zeros((len(val), config.data.num_candidates), np.float32)
  for k in range(3):
    rows = [i for i, e in enumerate(val) if val_fold[e.user] == k]
    pooled[rows] = O.load_oracle(ctx.paths.oracle_fold_model(k)).scores(
        [val[i].history for i in rows], np.array([val[i].candidates for i in rows]))
  target_pos = np.array([list(e.candidates).index(e.target) for e in val])
  assert calibration["tau"] == pytest.approx(O.fit_temperature(pooled, target_pos), rel=1e-6)
  config.smoothing.fit_tau = True
  outcome = pipeline.run(config, workdir, ["oracle", "negatives"])
  assert outcome == {"oracle": "up to date", "negatives": "ran"}
  fitted = [p for p in read_records(ctx.paths.pairs)
            if p["strategy"] in ("random", "popularity", "self_hard")]
  want = np.clip(1.0 / (1.0 + np.exp(-(s[:, 1].astype(np.float64) - s[:, 0])
                                     / calibration["tau"])), 0.0, 0.45)
  np.testing.assert_allclose([p["eps"] for p in fitted], want, rtol=1e-5, atol=1e-7)


def test_seeds_run_the_model_units_per_seed_over_shared_data_and_oracle(finished_run, tmp_path):
  """config.seeds=(0, 1): data and oracle once, sft .. export once per seed under DIR/seed_<s>;
  seed 0 is the run without seeds (model.seed 0); the report's summary.json holds every figure
  over the seeds and the paired differences."""
  config = _config()
  config.seeds = (0, 1)
  workdir = str(tmp_path / "w")
  outcome = pipeline.run(config, workdir, ["all"])
  assert [u for u in outcome if not u.startswith("seed_")] == ["data", "oracle", "report"]
  for seed in (0, 1):
    for unit in ("sft", "negatives", "dpo/dpo", "dpo/rosepo", "eval/sft", "eval/rosepo",
                 "export/dpo"):
      assert outcome[f"seed_{seed}/{unit}"] == "ran"
  assert not os.path.exists(os.path.join(workdir, "sft"))
  ref, _ = finished_run
  runs = {}
  for seed in (0, 1):
    runs[seed] = {r: json.load(open(os.path.join(workdir, f"seed_{seed}", "eval", f"{r}.json")))
                  for r in ("sft", "dpo", "rosepo")}
  for r in ("sft", "dpo", "rosepo"):  # seed 0 is the run without seeds
    want = json.load(open(os.path.join(ref, "eval", f"{r}.json")))
    assert {k: runs[0][r][k] for k in EVAL_KEYS} == {k: want[k] for k in EVAL_KEYS}
  sft = [checkpoints.load_orbax(os.path.join(workdir, f"seed_{s}", "sft", "model")) for s in (0, 1)]
  assert not np.allclose(np.asarray(sft[0].embed[...]), np.asarray(sft[1].embed[...]))
  summary = json.load(open(os.path.join(workdir, "eval", "summary.json")))
  assert summary["seeds"] == [0, 1]
  for r in ("sft", "dpo", "rosepo"):
    f = summary["runs"][r]["rank_ndcg@10"]
    values = [runs[s][r]["rank_ndcg@10"] for s in (0, 1)]
    assert f["mean"] == pytest.approx(np.mean(values)) and f["seeds"] == 2
    assert f["std"] == pytest.approx(np.std(values, ddof=1))
  assert list(summary["differences"]) == ["rosepo - sft", "rosepo - dpo", "dpo - sft"]
  for figure in ("valid_ratio", "hit_ratio@1", "head_ratio", "rank_hit_ratio@1"):
    # per-example sums = eval's figures
    d = summary["differences"]["rosepo - sft"][figure]
    assert d["mean"] == pytest.approx(np.mean([runs[s]["rosepo"][figure] - runs[s]["sft"][figure]
                                               for s in (0, 1)]), abs=1e-12)
  assert "Paired differences" in open(os.path.join(workdir, "report.md")).read()
  # The tiny model answers nothing valid, so the greedy differences above are 0 = 0. On planted answers
  # (rosepo right on every 3rd example, sft on every 4th, shifted by seed) the report's paired
  # difference is the one written out here, and its bootstrap interval has width around it.
  planted = {"rosepo": 3, "sft": 4}
  for seed in (0, 1):
    for run, every in planted.items():
      path = os.path.join(workdir, f"seed_{seed}", "eval", f"{run}.predictions.jsonl")
      rows = [json.loads(line) for line in open(path)]
      for i, row in enumerate(rows):
        row["hit"] = row["valid"] = (i + seed) % every == 0
      with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
  assert pipeline.run(config, workdir, ["report"], force=True) == {"report": "ran"}
  n = len(rows)
  want = np.mean([np.mean([(i + s) % 3 == 0 for i in range(n)]) -
                  np.mean([(i + s) % 4 == 0 for i in range(n)]) for s in (0, 1)])
  d = json.load(open(os.path.join(workdir, "eval", "summary.json")))["differences"]
  hit = d["rosepo - sft"]["hit_ratio@1"]
  assert hit["mean"] == pytest.approx(want, abs=1e-12) and want != 0
  assert hit["ci95"][0] < want < hit["ci95"][1]
  assert d["rosepo - dpo"]["hit_ratio@1"]["mean"] == pytest.approx(
      np.mean([np.mean([(i + s) % 3 == 0 for i in range(n)]) for s in (0, 1)]), abs=1e-12)
  # Up to date as a whole; a new seed runs only its own units (and the report).
  assert set(pipeline.run(config, workdir, ["all"]).values()) == {"up to date"}
  config.seeds = (0, 1, 2)
  again = pipeline.run(config, workdir, ["all"])
  assert {u for u, how in again.items() if how == "ran"} == {
      u for u in again if u.startswith("seed_2/")} | {"report"}
  assert json.load(open(os.path.join(workdir, "eval", "summary.json")))["seeds"] == [0, 1, 2]


def test_report_rank_difference_is_paired_and_left_out_without_ranks():
  """seed_figures' rank_hit_ratio@1 difference is the per-example (rank == 0) difference; runs
  evaluated without ranking (rank None) get the greedy figures only."""
  def preds(ranks):
    return [{"index": i, "user": i, "hit": False, "valid": False, "answer_item": None,
             "rank": r} for i, r in enumerate(ranks)]
  summary = {"rank_hit_ratio@1": 0.0, "hit_ratio@1": 0.0}
  ranks = {"rosepo": [0, 0, 3, 0], "sft": [1, 0, 0, 2]}
  out = report.seed_figures({0: {r: summary for r in ranks}},
                            {0: {r: preds(v) for r, v in ranks.items()}}, np.zeros(4, bool))
  assert out["differences"]["rosepo - sft"]["rank_hit_ratio@1"]["mean"] == pytest.approx(0.25)
  ranks["sft"] = [None] * 4
  out = report.seed_figures({0: {r: summary for r in ranks}},
                            {0: {r: preds(v) for r, v in ranks.items()}}, np.zeros(4, bool))
  assert set(out["differences"]["rosepo - sft"]) == {"hit_ratio@1", "valid_ratio", "head_ratio"}


def test_report_seeds_table_names_one_run_or_its_seeds():
  """The table's first line: "One run" without config.seeds (seed None), else the seeds."""
  def preds():
    return [{"index": i, "user": i, "hit": i == 0, "valid": True, "answer_item": 0, "rank": 0}
            for i in range(4)]
  summary = {"hit_ratio@1": 0.25}
  for seeds, first in (([None], "One run (no config.seeds)."),
                       ([0, 1], "Over 2 seeds [0, 1]: mean +- std")):
    out = report.seed_figures({s: {"sft": summary, "rosepo": summary} for s in seeds},
                              {s: {"sft": preds(), "rosepo": preds()} for s in seeds},
                              np.zeros(4, bool))
    assert report.seeds_table(out).splitlines()[0].startswith(first)


def test_report_differences_are_rosepo_against_each_run_and_each_run_against_sft():
  runs = ("sft", "dpo", "sdpo", "rosepo", "rosepo_no_semantic")
  assert report.differences(runs) == [
      ("rosepo", "sft"), ("rosepo", "dpo"), ("rosepo", "sdpo"), ("rosepo", "rosepo_no_semantic"),
      ("dpo", "sft"), ("sdpo", "sft"), ("rosepo_no_semantic", "sft")]
  assert report.differences(("sft", "dpo")) == [("dpo", "sft")]
  assert report.differences(("dpo", "ipo")) == []
  assert report.differences(("sft", "dpo", "rosepo", "rosepo_no_smoothing"),
                            ("dpo", "rosepo_no_smoothing")) == [
      ("rosepo", "sft"), ("rosepo", "dpo"), ("rosepo", "rosepo_no_smoothing"), ("dpo", "sft"),
      ("rosepo_no_smoothing", "sft"), ("rosepo_no_smoothing", "dpo")]  # each pair once
