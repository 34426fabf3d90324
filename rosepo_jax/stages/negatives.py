"""The negatives stage: RosePO's preference pairs (METHOD.md sections 3 and 4).

Reads config: negatives, smoothing (lam, tau, eps_min, eps_max, semantic_eps, fit_tau: then tau is
the oracle stage's fit, DIR/oracle/calibration.json), vocab_chunk, preference.prompts and
preference.held_out_share (whose training prompts: `Context.preference_sample`).
Consumes: data (dataset, tokenizer), sft (pi_ref: answers, candidate scores, title embeddings,
reference log-probs), oracle (each pair's eps, from the fold oracle that never trained on the
pair's user when the oracle is cross-fitted).
Writes: DIR/preference/pairs.array_record (one JSON record per pair) and DIR/preference/stats.json.

One pair per configured strategy per prompt (chosen = the target title; the strategies are the
table `rosepo_jax.negatives.STRATEGIES`), plus one for each SFT answer that matches no candidate
(a real hallucination) when a strategy asks for them. Each pair stores the prompt ids, the chosen
and rejected token ids, its strategy, the rejected item (-1 for a hallucination), eps (the oracle's
for candidates; smoothing.semantic_eps for invalid answers), oracle_fold (the fold oracle that
scored it; -1: the oracle trained on every user, or no oracle score), the reference log-probs of
chosen and rejected under the SFT model, and with the synthetic world eps_world (the ideal eps
from the world's true probabilities, `oracle.world_eps`, with the same lam and bounds).

A hallucination pair's rejected response is the SFT answer's generated ids (up to EOS, then EOS),
never its text encoded again. Semantic negatives place titles (`semantic_embeddings`) by the SFT
model's input embeddings (`semantic_title_ids`): the mean over a title's subword tokens, or with
title tokens the title's own token, which training updates (its subwords never occur in prompts
then); with `negatives.semantic_embedding="oracle"`, by the all-users oracle's item embeddings.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rosepo_jax import checkpoints, generate, metrics, multihost, negatives, scoring
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.data.batching import EncodedRow
from rosepo_jax.stages import oracle as oracle_stage
from rosepo_jax.workdir import (Context, Paths, Stage, Unit, read_json, write_json,
                                write_records)



def sft_answers(ctx: Context, reference, examples, encoded
                ) -> tuple[list[list[int]], list[str], list[int | None]]:
  """The SFT model's greedy answers, as generated ids (up to EOS) and as text, and the candidate
  each one names (None: no candidate)."""
  section = ctx.config.negatives
  ids = generate.greedy_answer_ids(reference, [p for p, _ in encoded], ctx.codec.pad_token_id,
                                   section.batch_size, section.max_new_tokens,
                                   desc="negatives: SFT answers")
  answers = [ctx.codec.decode(a).strip() for a in ids]
  items = []
  for ex, answer in zip(examples, answers):
    pos = metrics.match_exact(answer, ex.candidate_titles)
    items.append(None if pos is None else ex.candidates[pos])
  return ids, answers, items


def semantic_title_ids(codec, titles) -> list[tuple[int, ...]]:
  """The input tokens whose mean embedding places each title for semantic negatives (METHOD.md
  section 3: the mean of the SFT model's input embeddings over the title's tokens): its subword
  tokens, or with title tokens the title's own token. A title token is trained by every prompt
  that shows the title; its subwords, which prompts never hold then, stay at their random init."""
  if codec.title_tokens:
    return [(codec.title_offset + item,) for item in range(len(titles))]
  return [codec.title_text_ids(t) or (codec.eos_token_id,) for t in titles]


def semantic_embeddings(ctx: Context, reference) -> np.ndarray:
  """Unit embeddings [items, D] that place the titles for semantic negatives: the SFT model's
  (`reference`) input rows of each title's tokens, or the all-users oracle's item embeddings
  (`config.negatives.semantic_embedding`)."""
  ds = ctx.dataset
  if ctx.config.negatives.semantic_embedding == "oracle":
    rows = oracle_lib.load_oracle(ctx.paths.oracle_model).item_embeddings()
    return negatives.title_embeddings([(i,) for i in range(ds.num_items)], rows)
  return negatives.title_embeddings(semantic_title_ids(ctx.codec, ds.titles),
                                    multihost.to_host(reference.embed[...]).astype(np.float32))


def smoothing_settings(ctx: Context) -> oracle_lib.SmoothingConfig:
  """config.smoothing, with tau the oracle stage's fit when config.smoothing.fit_tau is set."""
  settings = ctx.config.smoothing
  if settings.fit_tau:
    tau = read_json(ctx.paths.oracle_calibration, "run the oracle stage")["tau"]
    settings = dataclasses.replace(settings, tau=tau)
  return settings


def run(ctx: Context, unit: Unit | None = None) -> dict:
  """Builds and writes the pairs; returns the stats."""
  del unit
  config, section, codec, ds = ctx.config, ctx.config.negatives, ctx.codec, ctx.dataset
  strategies = {name: negatives.STRATEGIES[name] for name in section.strategies}
  needs = set().union(*(s.needs for s in strategies.values())) if strategies else set()
  examples, encoded = ctx.preference_sample(section.max_prompts)
  reference = checkpoints.load_orbax(ctx.paths.model("sft"), mesh=ctx.mesh())
  oracle = oracle_lib.load_oracle(ctx.paths.oracle_model)
  fold_oracles, user_fold = oracle_stage.load_fold_oracles(ctx.paths)
  eos = codec.eos_token_id

  answer_ids, answers, answer_items = [[]] * len(examples), [""] * len(examples), \
      [None] * len(examples)
  if "answers" in needs:
    answer_ids, answers, answer_items = sft_answers(ctx, reference, examples, encoded)
  cand_logps = {}
  if "candidate_logps" in needs:  # where the answer is not already a valid mistake
    todo = [i for i, (ex, item) in enumerate(zip(examples, answer_items))
            if item is None or item == ex.target]
    rows = scoring.candidate_rows(codec, [encoded[i][0] for i in todo],
                                  [examples[i].candidates for i in todo], ds.titles)
    scores = scoring.score_responses(reference, rows, batch_size=max(section.batch_size // 4, 1),
                                     shape=ctx.batch_shape, vocab_chunk=config.vocab_chunk,
                                     desc="negatives: candidate scores")
    cand_logps = dict(zip(todo, scores))
  response_ids = [codec.encode_response(t) for t in ds.titles]
  embeddings = None
  if "embeddings" in needs:
    embeddings = semantic_embeddings(ctx, reference)

  pairs = []  # (example position, strategy, rejected item or -1, rejected token ids)
  for i, ex in enumerate(examples):
    evidence = negatives.Evidence(
        seed=config.data.seed, popularity=ds.train_popularity,
        popularity_alpha=section.popularity_alpha, unit_embeddings=embeddings,
        answer_item=answer_items[i], candidate_logps=cand_logps.get(i))
    for name, strategy in strategies.items():
      item = strategy.choose(ex, evidence)
      pairs.append((i, name, item, response_ids[item]))
    if (any(s.hallucinations for s in strategies.values()) and answer_items[i] is None
        and answers[i]):  # the answer as generated: its ids, not its text encoded again
      pairs.append((i, negatives.HALLUCINATION, -1, tuple(answer_ids[i]) + (eos,)))

  # Smoothing factors: the oracle's s(u, y_l) vs s(u, y_w) for candidates, a fixed eps otherwise.
  # Cross-fitted: each pair is scored by the fold oracle that never trained on its user.
  # With the synthetic world, also each pair's ideal eps from the true probabilities.
  eps = np.full(len(pairs), config.smoothing.semantic_eps, np.float32)
  eps_world = eps.copy()
  fold = np.full(len(pairs), -1, np.int64)
  scored = [k for k, p in enumerate(pairs) if negatives.scored_by_oracle(p[1])]
  if scored:
    owners = [examples[pairs[k][0]] for k in scored]
    s, fold[scored] = oracle_lib.cross_fitted_scores(
        fold_oracles, oracle, user_fold, [ex.user for ex in owners], [ex.history for ex in owners],
        np.array([[ex.target, pairs[k][2]] for ex, k in zip(owners, scored)]))
    eps[scored] = oracle_lib.smoothing_factor(s[:, 1], s[:, 0], smoothing_settings(ctx))
    if ctx.knows_truth:
      p_NxC = ctx.true_probs("train", owners)
      at = lambda ex, item: list(ex.candidates).index(item)  # pylint: disable=unnecessary-lambda-assignment
      n = np.arange(len(owners))
      p_w = p_NxC[n, [at(ex, ex.target) for ex in owners]]
      p_l = p_NxC[n, [at(ex, pairs[k][2]) for ex, k in zip(owners, scored)]]
      eps_world[scored] = oracle_lib.world_eps(p_l, p_w, config.smoothing)
  # Reference log-probs of chosen and rejected, once.
  rows = [EncodedRow(encoded[i][0], (encoded[i][1], rejected)) for i, _, _, rejected in pairs]
  ref = scoring.score_responses(reference, rows, batch_size=section.batch_size,
                                shape=ctx.batch_shape, vocab_chunk=config.vocab_chunk,
                                desc="negatives: reference log-probs")
  write_records(ctx.paths.pairs, [
      {"example": int(examples[i].index), "strategy": name, "prompt": list(encoded[i][0]),
       "chosen": list(encoded[i][1]), "rejected": list(rejected), "rejected_item": int(item),
       "eps": float(eps[k]), "oracle_fold": int(fold[k]),
       "ref_logps": [float(ref[k, 0]), float(ref[k, 1])],
       **({"eps_world": float(eps_world[k])} if ctx.knows_truth else {})}
      for k, (i, name, item, rejected) in enumerate(pairs)])

  kinds = {"hit": 0, "valid_miss": 0, "hallucination": 0}
  for ex, item in zip(examples, answer_items):
    kinds["hallucination" if item is None else "hit" if item == ex.target else "valid_miss"] += 1
  names = [p[1] for p in pairs]
  stats = {"prompts": len(examples), "pairs": len(pairs), "per_strategy": {},
           "sft_answers": {k: v / max(len(examples), 1) for k, v in kinds.items()}}
  for name in sorted(set(names)):
    rows = [k for k, n in enumerate(names) if n == name]
    e = eps[rows]
    stats["per_strategy"][name] = {
        "pairs": int(len(e)), "eps_mean": float(e.mean()),
        **{f"eps_p{q}": float(np.percentile(e, q)) for q in (10, 50, 90)},
        **({"eps_world_mean": float(eps_world[rows].mean())} if ctx.knows_truth else {})}
  write_json(ctx.paths.negatives_stats, stats)
  print(f"negatives: {len(pairs)} pairs for {len(examples)} prompts; SFT answers "
        + ", ".join(f"{k} {v:.2f}" for k, v in stats["sft_answers"].items()), flush=True)
  return stats


def _units(config) -> list[Unit]:
  """One unit when a configured method reads the pairs, else none."""
  return [Unit("negatives")] if any(config.uses_negatives(m) for m in config.methods) else []


def _outputs(paths: Paths, unit: Unit) -> list[str]:
  del unit
  return [paths.negatives]


STAGE = Stage(
    name="negatives",
    sections=("negatives", "preference.prompts", "preference.held_out_share",
              "smoothing.lam", "smoothing.tau", "smoothing.eps_min",
              "smoothing.eps_max", "smoothing.semantic_eps", "smoothing.fit_tau", "vocab_chunk"),
    units=_units, inputs=lambda config, unit: [Unit("data"), Unit("sft"), Unit("oracle")],
    outputs=_outputs, run=run,
    required=lambda config, paths, unit: [paths.pairs, paths.negatives_stats], per_seed=True)
