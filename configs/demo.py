"""The embedded default (README main job): the synthetic world, a 2-layer Llama from scratch that
reads and writes every title as one token, with SASRec's next-item objective inside its SFT.

The whole pipeline (data -> sft -> oracle -> negatives -> dpo, rosepo -> eval -> export -> report)
in about 8 minutes on 2 idle CPU cores. The world, data, preference and eval sections are
configs/synthetic_text.py's (the demo until commit 714d0e0, titles as text); what differs,
each chosen on validation (docs/results.md, "The demo's recipe, chosen on validation"):
- titles as tokens (`common.title_tokens_from_scratch`: the last layer starts as copy heads, SFT
  starts on prompts that show 2, 5, 10, then 15 of the 20 candidates, at 1e-3);
- the history loss (`sft.history_loss_weight=1`): SFT also predicts each history title from the
  prompt before it, a dense next-item signal where the answer gives one per prompt;
- 1,000 SFT steps on a schedule of their own (validation HitRatio@1 0.425 at 1,000, 0.428 at
  1,250, 0.410 at 2,000, 0.337 at 750);
- 2 oracle folds (each pair's smoothing still comes from an oracle that never saw its user).
"""

from configs import common, synthetic_text


def get_config():
  c = synthetic_text.get_config()
  common.title_tokens_from_scratch(c, sft_steps=1000)
  c.sft.history_loss_weight = 1.0
  c.methods = ("sft", "dpo", "rosepo")
  c.oracle.folds = 2
  return c
