"""Prompt templates (METHOD.md section 1): domain instruction, history titles, candidates, "Answer:".

A template is a format string with {history}, {candidates} and {n}. How a list of titles is
written is the title format:
  comma  "A, B, C": unambiguous only while no title contains ", "
  lines  one "- title" line per title: unambiguous for every title without a newline
  auto   (config default) comma when no title of the catalogue contains ", ", else lines
The response is " " + target title, followed by EOS at tokenization time.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def join_titles(titles: Sequence[str], title_format: str) -> str:
  if title_format == "lines":
    return "\n".join("- " + t for t in titles)
  return ", ".join(titles)


def render_prompt(template: str, history: Sequence[str], candidates: Sequence[str],
                  title_format: str = "comma") -> str:
  return template.format(history=join_titles(history, title_format),
                         candidates=join_titles(candidates, title_format), n=len(candidates))


def resolve_title_format(title_format: str, titles: Sequence[str]) -> str:
  """The title format a catalogue is shown in: `title_format`, or for "auto" the comma format
  unless a title contains its separator. A title with a newline cannot be shown as lines."""
  if title_format == "auto":
    title_format = "lines" if any(", " in t for t in titles) else "comma"
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


def templates_for(prompt_cfg, dataset_name: str, title_format: str = "comma") -> list[str]:
  """Templates from config (``prompt.templates``) or the dataset's domain default for the
  (resolved) title format."""
  templates = list(prompt_cfg.templates)
  if templates:
    for t in templates:
      for key in ("{history}", "{candidates}"):
        if key not in t:
          raise ValueError(f"prompt template lacks {key}: {t[:80]!r}")
      if not t.rstrip().endswith("Answer:"):
        raise ValueError(f"prompt template must end with 'Answer:': {t[-40:]!r}")
    return templates
  domain = prompt_cfg.domain or DATASET_DOMAINS.get(dataset_name, "items")
  if domain not in DEFAULT_TEMPLATES:
    raise ValueError(f"prompt.domain={domain!r}; expected one of {sorted(DEFAULT_TEMPLATES)}")
  return [DEFAULT_TEMPLATES[domain][title_format]]
