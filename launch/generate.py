r"""Greedy completion of one prompt with our Flax model.

  python -m launch.generate --model=out/smollm2_hf --prompt="The capital of France is"
  python -m launch.generate --model=ckpt_dir --tokenizer=tok_dir --prompt_ids=1,2,3 \
      --logits_out=/tmp/logits.npy

--model is a .gguf file (or pkg:NAME), an HF folder or an orbax model directory. With
--logits_out, the float32 logits [prompt_len, vocab] of the prompt's forward are saved too.
"""

import json

from absl import app, flags

from launch.errors import UsageError, parse_flags, run_main

flags.DEFINE_string("model", None, "Model: .gguf file, pkg:NAME, HF folder or orbax model dir.")
flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: the model's own).")
flags.DEFINE_string("prompt", None, "Prompt text (tokenized without added special tokens).")
flags.DEFINE_list("prompt_ids", None, "Prompt token ids, comma separated (instead of --prompt).")
flags.DEFINE_integer("max_new_tokens", 32, "Largest number of generated tokens.")
flags.DEFINE_string("logits_out", None, "Save the prompt forward's float32 logits here (.npy).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rosepo_jax import checkpoints, generate, model as model_lib  # pylint: disable=g-import-not-at-top

  if (FLAGS.prompt is None) == (FLAGS.prompt_ids is None):
    raise UsageError("give exactly one of --prompt and --prompt_ids")
  if FLAGS.max_new_tokens < 1:
    raise UsageError(f"--max_new_tokens={FLAGS.max_new_tokens}: expected >= 1")
  ids = None
  if FLAGS.prompt_ids is not None:
    try:
      ids = [int(i) for i in FLAGS.prompt_ids]
    except ValueError:
      raise UsageError(f"--prompt_ids={','.join(FLAGS.prompt_ids)}: expected integers") from None
  checkpoints.check_model_path(FLAGS.model, "--model")
  if FLAGS.tokenizer:
    checkpoints.check_model_path(FLAGS.tokenizer, "--tokenizer", tokenizer=True)
  model = checkpoints.load_model(FLAGS.model, dtype=FLAGS.dtype)
  tokenizer = None
  if FLAGS.tokenizer or FLAGS.prompt is not None:
    tokenizer = checkpoints.load_tokenizer(FLAGS.tokenizer or FLAGS.model)
  if ids is None:
    ids = tokenizer(FLAGS.prompt, add_special_tokens=True)["input_ids"]
  if not ids:
    given = (f"--prompt={FLAGS.prompt!r} holds no tokens" if FLAGS.prompt is not None
             else "--prompt_ids= holds no token ids")
    raise UsageError(f"{given}; give a non-empty prompt")
  bad = [i for i in ids if not 0 <= i < model.cfg.vocab_size]
  if bad:
    raise UsageError(f"--prompt_ids {bad} are outside the vocabulary [0, {model.cfg.vocab_size})")
  positions = model.cfg.max_position_embeddings
  if len(ids) + FLAGS.max_new_tokens > positions:
    raise UsageError(f"the prompt's {len(ids)} tokens plus --max_new_tokens={FLAGS.max_new_tokens} "
                     f"exceed the model's {positions} positions (max_position_embeddings)")
  tokens, valid = generate.left_pad([ids], pad_id=0)
  if FLAGS.logits_out:
    v = jnp.asarray(valid)
    logits, _ = model(jnp.asarray(tokens), model_lib.positions_from_mask(v),
                      model_lib.causal_mask(v))
    np.save(FLAGS.logits_out, np.asarray(logits[0], np.float32))
  out = generate.greedy_generate(model, tokens, valid, FLAGS.max_new_tokens)[0]
  new_ids = generate.trim_at_eos(out.tolist(), model.cfg.eos_token_ids)
  print(json.dumps({"prompt_ids": ids, "completion_ids": new_ids}))
  if tokenizer is not None:
    print("completion:", tokenizer.decode(new_ids))


if __name__ == "__main__":
  flags.mark_flags_as_required(["model"])
  app.run(run_main(main), flags_parser=parse_flags)
