"""Prompt templates (METHOD.md section 1): domain instruction, history titles, candidates, "Answer:".

A template is a format string with {history}, {candidates} and {n}. How a list of titles is
written is the title format:
  comma  "A, B, C": unambiguous only while no title contains ", "
  lines  one "- title" line per title: unambiguous for every title without a newline
  auto   (config default) comma when no title of the catalogue contains ", " or titles are
         tokens (`data.codec`), else lines
The response is " " + target title, followed by EOS at tokenization time.
"""

from __future__ import annotations

from collections.abc import Sequence
import string

from rosepo_jax.data.candidates import example_rng

TITLE_FORMATS = ("comma", "lines")
_DOMAINS = {  # (what the history is, the question)
    "music": ("This user has listened to these music artists, oldest first",
              "Which one of these {n} artists will the user listen to next? Answer:"),
    "movies": ("This user has watched these movies, oldest first",
               "Which one of these {n} movies will the user watch next? Answer:"),
    "items": ("This user has interacted with these items, oldest first",
              "Which one of these {n} items will the user choose next? Answer:"),
}
DEFAULT_TEMPLATES = {
    domain: {"comma": f"{intro}: {{history}}.\nCandidates: {{candidates}}.\n{question}",
             "lines": f"{intro}:\n{{history}}\nCandidates:\n{{candidates}}\n{question}"}
    for domain, (intro, question) in _DOMAINS.items()}
DATASET_DOMAINS = {"lastfm": "music", "movielens100k": "movies", "synthetic": "items",
                   "generic": "items"}
PROMPT_PURPOSE = 1  # rng stream id for template sampling (the rest: candidates.py)


Piece = tuple[str, bool]  # (text, is a title)


def title_pieces(titles: Sequence[str], title_format: str) -> list[Piece]:
  """A list of titles as pieces: each title, and the separators of the title format around it."""
  out: list[Piece] = []
  for k, t in enumerate(titles):
    if title_format == "lines":
      out += [("\n- " if k else "- ", False), (t, True)]
    else:
      out += ([(", ", False)] if k else []) + [(t, True)]
  return out


def render_pieces(template: str, history: Sequence[str], candidates: Sequence[str],
                  title_format: str = "comma") -> list[Piece]:
  """The prompt as pieces in order: template text and titles, each title marked where the
  template placed it (never found by matching text), so a tokenizer can give it its own token.
  Empty text pieces are dropped; adjacent text pieces are merged."""
  lists = {"history": title_pieces(history, title_format),
           "candidates": title_pieces(candidates, title_format)}
  out: list[Piece] = []
  for literal, field, _, _ in string.Formatter().parse(template):
    parts = [(literal, False)]
    if field is not None:
      parts += lists[field] if field in lists else [(template_field(field, len(candidates)),
                                                     False)]
    for text, is_title in parts:
      if not text:
        continue
      if out and not is_title and not out[-1][1]:
        out[-1] = (out[-1][0] + text, False)
      else:
        out.append((text, is_title))
  return out


def template_field(field: str, n: int) -> str:
  if field != "n":
    raise ValueError(f"prompt template field {{{field}}}: expected {{history}}, {{candidates}} "
                     "or {n}")
  return str(n)


def render_prompt(template: str, history: Sequence[str], candidates: Sequence[str],
                  title_format: str = "comma") -> str:
  """The prompt text: its pieces (`render_pieces`) joined."""
  return "".join(text for text, _ in render_pieces(template, history, candidates, title_format))


def resolve_title_format(title_format: str, titles: Sequence[str],
                         title_tokens: bool = False) -> str:
  """The title format a catalogue is shown in: `title_format`, or for "auto" the comma format
  unless a title written as text contains its separator (a title token is never split, so with
  `title_tokens` "auto" is always comma). A title with a newline cannot be shown as lines."""
  if title_format == "auto":
    title_format = ("lines" if not title_tokens and any(", " in t for t in titles)
                    else "comma")
  if title_format not in TITLE_FORMATS:
    raise ValueError(f"prompt.title_format={title_format!r}; expected auto or one of "
                     f"{list(TITLE_FORMATS)}")
  if title_format == "lines":
    bad = [i for i, t in enumerate(titles) if "\n" in t or "\r" in t]
    if bad:
      raise ValueError(f"prompt.title_format='lines': the titles of items {bad[:5]} contain a "
                       "line break")
  return title_format


def response_text(title: str) -> str:
  return " " + title


def choose_template(templates: Sequence[str], seed: int, split: str, index: int) -> str:
  """The first template, or a seeded per-example choice when several are given."""
  if len(templates) == 1:
    return templates[0]
  return templates[int(example_rng(seed, split, index, PROMPT_PURPOSE).integers(len(templates)))]


def template_problem(template: str) -> str:
  """What is wrong with a prompt template, or "": it must hold {history} and {candidates} once
  each, no other field but {n}, and end with "Answer:"."""
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
  except ValueError as e:
    return f"not a format string ({e}; write a literal brace as {{{{ or }}}})"
  for key in ("history", "candidates"):
    if fields.count(key) != 1:
      return f"expected {{{key}}} once, found it {fields.count(key)} times"
  unknown = sorted(set(fields) - {"history", "candidates", "n"})
  if unknown:
    return f"unknown field(s) {unknown}; expected {{history}}, {{candidates}} and {{n}}"
  if not template.rstrip().endswith("Answer:"):
    return f"expected it to end with 'Answer:', it ends with {template[-20:]!r}"
  return ""


def templates_for(prompt_cfg, dataset_name: str, title_format: str = "comma") -> list[str]:
  """Templates from config (``prompt.templates``, checked by `rosepo_jax.config`) or the
  dataset's domain default for the (resolved) title format."""
  if prompt_cfg.templates:
    return list(prompt_cfg.templates)
  domain = prompt_cfg.domain or DATASET_DOMAINS.get(dataset_name, "items")
  return [DEFAULT_TEMPLATES[domain][title_format]]
