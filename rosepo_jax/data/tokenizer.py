"""Tokenizers: a byte-level BPE trained on the dataset (for models trained from scratch), or a
pretrained backbone's tokenizer (HF folder, GGUF file or pkg:NAME).

Either way the result is a transformers PreTrainedTokenizerFast with an EOS and a pad token;
the trained one is saved as tokenizer.json (+ config) loadable by AutoTokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from rosepo_jax import checkpoints, files

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
  """Byte-level BPE over `texts`; ids 0, 1, 2 are <pad>, <eos>, <unk>."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                 unk_token="<unk>")


def load_pretrained_tokenizer(path: str):
  """The tokenizer of a backbone; pad defaults to EOS when the tokenizer has none."""
  tok = checkpoints.load_tokenizer(path)
  if tok.eos_token_id is None:
    raise ValueError(f"{path}: the tokenizer defines no EOS token; responses need one")
  if tok.pad_token_id is None:
    tok.pad_token = tok.eos_token
  return tok


def save_tokenizer(tok, folder: str) -> None:
  """Writes `tok`'s files as the folder `folder` (local or gs://), replacing it."""
  with files.local_output(folder) as local:  # save_pretrained writes local files
    tok.save_pretrained(local)


def load_saved_tokenizer(folder: str):
  """The tokenizer `save_tokenizer` wrote in `folder` (local or gs://)."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  if not files.isfile(files.join(folder, "tokenizer.json")):
    raise FileNotFoundError(f"{folder}: no tokenizer.json (run the data stage first)")
  with files.local_copy(folder) as local:  # from_pretrained reads local files
    return AutoTokenizer.from_pretrained(local)
