r"""Which title embeddings make semantic negatives semantic? A measurement on a finished run folder.

  python benchmarks/semantic_neighbours.py --config=configs/synthetic_titles.py --workdir=DIR

For every training example of the negatives stage's draw (`negatives.max_prompts`), the semantic
negative is the non-candidate title closest (cosine) to the target's under an embedding of the
titles. This compares four embeddings:
  subwords      the mean of the SFT model's input rows over the title's subword tokens (what the
                negatives stage used with title tokens before: those rows are never trained then)
  title token   the SFT model's input row of the title's own token (what it uses now)
  oracle        the SASRec oracle's item embedding (DIR/oracle/model)
  random        a uniform non-candidate (the baseline)
and prints, for each, the share of neighbours that share the target's genre (the synthetic world
knows its genres), the share that some training user consumed together with the target, and the
mean true probability ratio p_neighbour / p_target of the example's window (synthetic world). With
title tokens it also counts how many of the titles' subword ids ever occur in a training prompt.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from rosepo_jax import checkpoints, multihost, negatives
from rosepo_jax import config as config_lib
from rosepo_jax import oracle as oracle_lib
from rosepo_jax.workdir import Context
# pylint: enable=g-import-not-at-top,wrong-import-position

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "A run folder whose sft (and oracle) units have finished.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  ctx = Context(config_lib.parse(FLAGS.config), FLAGS.workdir)
  if ctx.config.seeds:  # a run folder over seeds: the first seed's SFT model
    ctx = ctx.for_seed(ctx.config.seeds[0])
  ds, codec = ctx.dataset, ctx.codec
  examples, encoded = ctx.preference_sample(ctx.config.negatives.max_prompts)
  embed_VxD = multihost.to_host(checkpoints.load_orbax(ctx.paths.model("sft")).embed[...])
  embed_VxD = np.asarray(embed_VxD, np.float32)
  table = {"subwords": negatives.title_embeddings(
      [codec.title_text_ids(t) or (codec.eos_token_id,) for t in ds.titles], embed_VxD)}
  if codec.title_tokens:
    table["title token"] = negatives.title_embeddings(
        [(codec.title_offset + i,) for i in range(ds.num_items)], embed_VxD)
    in_prompts = {i for p, _ in encoded for i in p}
    subwords = {i for t in ds.titles for i in codec.title_text_ids(t)}
    print(f"subword ids of the titles: {len(subwords)}; occurring in the {len(encoded)} drawn "
          f"training prompts: {len(subwords & in_prompts)}")
  if os.path.isdir(ctx.paths.oracle_model):
    rows = oracle_lib.load_oracle(ctx.paths.oracle_model).item_embeddings().astype(np.float64)
    table["oracle"] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  together: dict[int, set[int]] = {}
  for ex in ds.examples("train"):
    for i in ex.history:
      together.setdefault(ex.target, set()).add(i)
      together.setdefault(i, set()).add(ex.target)
  genre = np.asarray(ds.info["item_genre"]) if "item_genre" in ds.info else None
  truth = ctx.window_truth("train") if ctx.knows_truth else None
  rng = np.random.default_rng(0)
  picks = {name: [negatives.semantic_rejected(ex.candidates, ex.target, unit) for ex in examples]
           for name, unit in table.items()}
  picks["random"] = [int(rng.choice([i for i in range(ds.num_items) if i not in ex.candidates]))
                     for ex in examples]
  print(f"{len(examples)} training examples of {ctx.config.data.name}:")
  for name, items in picks.items():
    pairs = list(zip(items, examples))
    line = f"  {name:12s}"
    if genre is not None:
      line += f" same genre {np.mean([genre[i] == genre[ex.target] for i, ex in pairs]):.3f}"
    line += (" consumed together "
             f"{np.mean([i in together.get(ex.target, ()) for i, ex in pairs]):.3f}")
    if truth is not None:
      ratio = [truth[ex.index][i] / truth[ex.index][ex.target] for i, ex in pairs]
      line += f" p(neighbour) / p(target) {np.mean(ratio):.3f}"
    print(line, flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
