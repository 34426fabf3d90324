"""LastFM with titles as tokens (`configs/lastfm_titles.py`), with the choices validation made for
answers restricted to the candidates: SFT's history loss, greedy decoding restricted to the
prompt's candidate titles (`eval.decoding`, beyond METHOD.md's free decoding) and the preference
stage at 1e-5 (docs/results.md, "Decoding restricted to the candidates on LastFM").

  python -m launch.main --config=configs/lastfm_restricted.py --config.seeds='(0,1,2)' --workdir=DIR
"""

from configs import lastfm_titles


def get_config():
  c = lastfm_titles.get_config()
  c.sft.history_loss_weight = 1.0
  c.eval.decoding = "candidates"
  c.preference.optim.learning_rate = 1e-5
  return c
