"""Text <-> token ids for prompts, responses and answers, with item titles as text or as tokens.

`config.tokenizer.title_tokens` chooses how a title is written:
  off  (default) a title is text like the rest: the prompt's text is tokenized as one string.
  on   every catalogue title is one token of its own, id `title_offset + item` (after the text
       tokenizer's vocabulary): a prompt is assembled piece by piece (`prompts.render_pieces`),
       template text tokenized, titles placed where the template put them. A title is never
       found by matching text, so an artist called "Love" or "Yes" cannot swallow a template
       word. Responses are the title token then EOS; an answer decodes to the title of its
       title token, so validity and every metric keep their meaning (a title token that is not
       one of the prompt's candidates is a hallucination, like any other non-candidate text).
`config.tokenizer.item_slots` (titles as text only) writes a title's text and then its item's
token (the same ids, `title_offset + item`): LLaRA's hybrid prompt, whose slot carries the item's
own embedding (`model.item_embeddings`). The prompt's text is tokenized as with titles as text,
and each slot follows the token that completes its title (the tokenizer's character offsets), so
a prompt is the text-title prompt with one more token per title. Responses are text; a slot in
an answer decodes to nothing.

The text tokenizer (an HF tokenizer) is the data stage's BPE or the backbone's, unchanged; the
title vocabulary is the dataset's catalogue (`RecDataset.titles`). A saved model (orbax model dir,
HF export) carries both: the tokenizer files and, with item tokens, TITLE_TOKENS_FILE
({"offset": id of item 0's token, "titles": [...], "slots": bool}); `Codec.load` reads them
back.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json

from rosepo_jax import files
from rosepo_jax.data import tokenizer as tokenizer_lib
from rosepo_jax.data.prompts import Piece, response_text

TITLE_TOKENS_FILE = "title_tokens.json"


def bos_prefix(tokenizer) -> tuple[int, ...]:
  """(BOS id,) when the tokenizer starts a text with its BOS token (Llama-2, Llama-3), else ()
  (SmolLM2, Qwen2, our BPE). Read from the tokenizer's own behaviour, not from a model list."""
  bos = getattr(tokenizer, "bos_token_id", None)
  if bos is None:
    return ()
  ids = tokenizer("a", add_special_tokens=True)["input_ids"]
  return (bos,) if ids[:1] == [bos] else ()


@dataclasses.dataclass
class Codec:
  """How the system turns prompts, titles and answers into ids and back.

  tokenizer: the text tokenizer (HF); titles: the catalogue (item id -> title) when items have
  tokens (titles as tokens, or item slots), else None; slots: the item tokens are slots after
  the titles' text (titles as text).
  """
  tokenizer: object
  titles: Sequence[str] | None = None
  slots: bool = False

  def __post_init__(self):
    self._bos = bos_prefix(self.tokenizer)
    self._text_ids: dict[str, tuple[int, ...]] = {}
    self._item_of = ({t: i for i, t in enumerate(self.titles)} if self.titles is not None
                     else None)
    if self.slots and self.titles is None:
      raise ValueError("Codec: item slots need the catalogue's titles")

  def save_pretrained(self, folder: str) -> None:
    """The tokenizer files, and with item tokens TITLE_TOKENS_FILE, into `folder`."""
    self.tokenizer.save_pretrained(folder)
    if self.item_tokens:
      files.write_text(files.join(folder, TITLE_TOKENS_FILE), json.dumps(
          {"offset": self.title_offset, "titles": list(self.titles), "slots": self.slots},
          ensure_ascii=False))

  @classmethod
  def load(cls, folder: str) -> "Codec":
    """The codec saved in `folder` (`save_pretrained`)."""
    path = files.join(folder, TITLE_TOKENS_FILE)
    saved = json.loads(files.read_text(path)) if files.isfile(path) else None
    codec = cls(tokenizer_lib.load_saved_tokenizer(folder),
                None if saved is None else saved["titles"],
                bool(saved and saved.get("slots", False)))
    if saved is not None and codec.title_offset != saved["offset"]:
      raise ValueError(f"{path}: title token offset {saved['offset']} but the tokenizer in "
                       f"{folder} has {codec.title_offset} tokens")
    return codec

  @property
  def item_tokens(self) -> bool:
    """Every item has a token of its own (titles as tokens, or item slots)."""
    return self.titles is not None

  @property
  def title_tokens(self) -> bool:
    """A title is written as its item's token (in prompts and answers)."""
    return self.item_tokens and not self.slots

  @property
  def title_offset(self) -> int:
    """The id of item 0's token (the text tokenizer's size)."""
    return len(self.tokenizer)

  @property
  def vocab_size(self) -> int:
    """Every id the codec produces: the text tokenizer's, then one per item when items have
    tokens."""
    return len(self.tokenizer) + (len(self.titles) if self.item_tokens else 0)

  @property
  def eos_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def pad_token_id(self) -> int:
    return self.tokenizer.pad_token_id

  def text_ids(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids of plain texts (no special tokens), in one batched tokenizer call."""
    if not texts:
      return []
    return [tuple(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

  def encode_prompts(self, prompts: Sequence[Sequence[Piece]]) -> list[tuple[int, ...]]:
    """Token ids of each prompt (its pieces, `prompts.render_pieces`), starting with the BOS
    token when the tokenizer adds one. Titles as text: the joined text in one batched call;
    titles as tokens: template text pieces tokenized (cached), each title its token; item
    slots: the joined text, each title's item token after the token that completes it."""
    if self.slots:
      return [self._bos + ids for ids in self._with_slots(prompts)]
    if not self.title_tokens:
      texts = ["".join(text for text, _ in pieces) for pieces in prompts]
      return [self._bos + ids for ids in self.text_ids(texts)]
    new = sorted({text for pieces in prompts for text, is_title in pieces
                  if not is_title and text not in self._text_ids})
    self._text_ids.update(zip(new, self.text_ids(new)))
    out = []
    for pieces in prompts:
      ids = list(self._bos)
      for text, is_title in pieces:
        ids += [self.title_id(text)] if is_title else self._text_ids[text]
      out.append(tuple(ids))
    return out

  def _with_slots(self, prompts: Sequence[Sequence[Piece]]) -> list[tuple[int, ...]]:
    """Each prompt's text ids (one batched call) with the item token of each title inserted
    after the first token that ends at or past the title's last character."""
    texts, ends = [], []
    for pieces in prompts:
      at, slots = 0, []
      for text, is_title in pieces:
        at += len(text)
        if is_title:
          slots.append((at, self.title_id(text)))
      texts.append("".join(text for text, _ in pieces))
      ends.append(slots)
    if not texts:
      return []
    try:
      enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as e:
      raise ValueError("item slots need a fast tokenizer (character offsets); "
                       f"{type(self.tokenizer).__name__} has none") from e
    out = []
    for ids, offsets, slots in zip(enc["input_ids"], enc["offset_mapping"], ends):
      ids_out, k = [], 0
      for token, (_, end) in zip(ids, offsets):
        ids_out.append(token)
        while k < len(slots) and end >= slots[k][0]:
          ids_out.append(slots[k][1])
          k += 1
      ids_out += [slot for _, slot in slots[k:]]  # a title at the very end (never: "Answer:")
      out.append(tuple(ids_out))
    return out

  def title_id(self, title: str) -> int:
    """The token of a catalogue title's item (item tokens only)."""
    item = self._item_of.get(title)
    if item is None:
      raise KeyError(f"{title!r} is not a title of the catalogue")
    return self.title_offset + item

  def encode_response(self, title: str) -> tuple[int, ...]:
    """A response's ids: the title (its token, or the text " " + title), then EOS."""
    ids = (self.title_id(title),) if self.title_tokens else self.title_text_ids(title)
    return ids + (self.eos_token_id,)

  def title_text_ids(self, title: str) -> tuple[int, ...]:
    """The text tokenizer's ids of a title or any answer text (as a response writes it, without
    EOS), whichever way titles are written in prompts."""
    return self.text_ids([response_text(title)])[0]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids (no EOS): title tokens become their titles, item slots nothing, runs of text
    ids are decoded by the tokenizer."""
    if self.slots:
      return self.tokenizer.decode([int(i) for i in ids if i < self.title_offset])
    if not self.title_tokens:
      return self.tokenizer.decode(list(ids))
    out, run = [], []
    offset = self.title_offset
    for i in ids:
      if offset <= i < offset + len(self.titles):
        if run:
          out.append(self.tokenizer.decode(run))
          run = []
        out.append(self.titles[i - offset])
      else:
        run.append(int(i))
    if run:
      out.append(self.tokenizer.decode(run))
    return "".join(out)
