"""Does RosePO's smoothing help? The demo's world, which knows each user's true preferences.

docs/results.md ("Does the smoothing help? A world that knows the answer"). The demo's data, model,
SFT recipe, oracle and negatives (configs/synthetic_text.py, the demo until commit 714d0e0), with:
  data.world.exposure_noise   0 (the demo's world) or 0.3: that share of interactions are random
                              exposures, so some chosen answers are noise and some rejected ones
                              truly preferred, the premise of the smoothing
  methods                     dpo, cdpo (the mean oracle eps as a constant), rosepo (each pair's
                              oracle eps), rosepo_world (each pair's ideal eps from the world's true
                              probabilities), rosepo_no_smoothing (eps 0)
  preference.steps            150 (the demo's) or longer (over-optimisation shows with length;
                              docs/results.md measures 600)
  seeds                       0, 1, 2
  eval.max_examples           0: the whole test split (2,407 rows of 300 users), for power
  report.baselines            every run against dpo and against rosepo_no_smoothing
The report adds the Bayes-optimal HitRatio@1 of the runs' rows.

  python -m launch.main --config=configs/world_smoothing.py --workdir=DIR
  python -m launch.main --config=configs/world_smoothing.py --config.preference.steps=600 \
      --workdir=DIR --stages=dpo,eval,report   # the same data, SFT and pairs: only preference
"""

from configs import synthetic_text


def get_config():
  c = synthetic_text.get_config()
  c.data.world.exposure_noise = 0.0  # or 0.3 (--config.data.world.exposure_noise=0.3)
  c.methods = ("sft", "dpo", "cdpo", "rosepo", "rosepo_world", "rosepo_no_smoothing")
  c.seeds = (0, 1, 2)
  c.eval.max_examples = 0
  c.report.baselines = ("dpo", "rosepo_no_smoothing")
  return c
