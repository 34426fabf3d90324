"""The whole pipeline on a tiny world: eval files, report, export, up-to-date markers, --force,
config changes, and resuming after SIGTERM."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO
import numpy as np
import pytest

from rosepo_jax import checkpoints, evaluation, pipeline
from test_stages import _tiny

EVAL_KEYS = ("hit_ratio@1", "valid_ratio", "valid_ratio_substring", "hit_ratio@1_valid",
             "pop_mean_percentile", "head_ratio", "coverage", "target_pop_mean_percentile",
             "target_head_ratio", "rank_hit_ratio@1", "rank_hit_ratio@5", "rank_hit_ratio@10",
             "rank_ndcg@5", "rank_ndcg@10", "num_examples")


def _config():
  config = _tiny(steps=4)
  config.methods = ("sft", "dpo", "rosepo")
  config.oracle.max_epochs = 2
  config.negatives.update(max_prompts=12, max_new_tokens=6, batch_size=4)
  config.eval.update(max_examples=24, batch_size=8, max_new_tokens=6)
  return config


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
    for p in predictions:
      assert {"prompt", "candidates", "target", "answer", "valid", "hit"} <= set(p)
      assert p["prompt"].endswith("Answer:") and p["target"] in p["candidates"]
      assert p["valid"] == any(p["answer"].casefold() == c.casefold() for c in p["candidates"])
  report = open(os.path.join(workdir, "report.md")).read()
  for run in ("sft", "dpo", "rosepo"):
    assert f"| {run} |" in report
  assert sorted(os.listdir(os.path.join(workdir, "plots"))) == ["eps.png", "popularity.png",
                                                                "training.png"]


def test_eval_subset_figures_are_the_figures_of_their_rows(finished_run):
  workdir, _ = finished_run
  config = _config()
  ds, tok = pipeline.open_dataset(config, workdir), pipeline.load_tokenizer(config, workdir)
  ds.eval_subsets = {"test": {"every": list(range(24)), "some": [1, 5, 7, 30]}}  # 30: not evaluated
  model = checkpoints.load_orbax(evaluation.model_dir(workdir, "sft"))
  figures, predictions = evaluation.evaluate_model(config, model, tok, ds, "test", 24)
  every, some = figures["subsets"]["every"], figures["subsets"]["some"]
  assert every == {k: v for k, v in figures.items() if k != "subsets"}
  rows = [p for p in predictions if p["index"] in (1, 5, 7)]
  assert some["num_examples"] == 3
  assert some["hit_ratio@1"] == pytest.approx(np.mean([p["hit"] for p in rows]))
  assert some["valid_ratio"] == pytest.approx(np.mean([p["valid"] for p in rows]))
  assert set(EVAL_KEYS) <= set(some)


def test_rerun_is_up_to_date_and_changes_rerun_downstream(finished_run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
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


def test_export_loads_in_transformers_and_answers_like_ours(finished_run):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM, AutoTokenizer  # pylint: disable=g-import-not-at-top
  workdir, _ = finished_run
  config = _config()
  folder = os.path.join(workdir, "export", "rosepo")
  theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  tok = AutoTokenizer.from_pretrained(folder)
  ours = checkpoints.load_orbax(os.path.join(workdir, "rosepo", "model"))
  ds = pipeline.open_dataset(config, workdir)
  prompt_ids = [p for p, _ in pipeline.encoded_examples(config, ds, tok, "test")[:20]]
  answers = evaluation.greedy_answers(ours, tok, prompt_ids, 8, 6)
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
  dpo = pipeline.Unit("dpo", "dpo")
  shutil.rmtree(os.path.join(killed, "dpo"))
  for path in evaluation.eval_paths(killed, "dpo") + (pipeline.marker_path(killed, dpo),):
    os.remove(path)
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(
      [sys.executable, "-c", _KILL_SCRIPT.format(tests=os.path.join(REPO, "tests"),
                                                 workdir=killed)],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = os.path.join(killed, "dpo", "checkpoints")
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    steps = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
    if any(int(d) >= 10 for d in steps):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=60)
  assert pipeline.read_marker(killed, dpo)["status"] == "running"
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
