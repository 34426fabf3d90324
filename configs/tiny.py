"""The whole pipeline in about a minute: a cut-down synthetic world and a one-layer model, a few
steps per stage. What the tests and the multi-process checks of launch/README.md run; its figures
mean nothing.

  python -m launch.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import synthetic_scratch


def get_config():
  c = synthetic_scratch.get_config()
  c.data.world.num_users = 60
  c.tokenizer.vocab_size = 300
  c.data.max_seq_len = 1024  # a 300-token BPE makes long prompts
  c.model.overrides = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16, max_position_embeddings=1024)
  c.sft.update(steps=4, batch_size=8, eval_every=2, eval_examples=16, log_every=1,
               checkpoint_every=2)
  c.preference.update(steps=4, batch_size=4, max_prompts=16, checkpoint_every=2, log_every=1)
  c.sft.optim.learning_rate = 1e-3
  c.preference.optim.learning_rate = 1e-3
  c.oracle.max_epochs = 2
  c.negatives.update(max_prompts=12, max_new_tokens=6, batch_size=4)
  c.eval.update(max_examples=24, batch_size=8, max_new_tokens=6)
  return c
