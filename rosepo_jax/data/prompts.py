"""Prompt templates (METHOD.md section 1): domain instruction, history titles, candidates, "Answer:".

A template is a format string with {history}, {candidates} and {n}; lists are joined with
`separator`. The response is " " + target title, followed by EOS at tokenization time.
"""

from __future__ import annotations

from collections.abc import Sequence

from rosepo_jax.data.candidates import example_rng

DEFAULT_TEMPLATES = {
    "music": ("This user has listened to these music artists, oldest first: {history}.\n"
              "Candidates: {candidates}.\n"
              "Which one of these {n} artists will the user listen to next? Answer:"),
    "movies": ("This user has watched these movies, oldest first: {history}.\n"
               "Candidates: {candidates}.\n"
               "Which one of these {n} movies will the user watch next? Answer:"),
    "items": ("This user has interacted with these items, oldest first: {history}.\n"
              "Candidates: {candidates}.\n"
              "Which one of these {n} items will the user choose next? Answer:"),
}
DATASET_DOMAINS = {"lastfm": "music", "movielens100k": "movies", "synthetic": "items",
                   "generic": "items"}
PROMPT_PURPOSE = 1  # rng stream id for template sampling (the rest: candidates.py)


def render_prompt(template: str, history: Sequence[str], candidates: Sequence[str],
                  separator: str = ", ") -> str:
  return template.format(history=separator.join(history), candidates=separator.join(candidates),
                         n=len(candidates))


def response_text(title: str) -> str:
  return " " + title


def choose_template(templates: Sequence[str], seed: int, split: str, index: int) -> str:
  """The first template, or a seeded per-example choice when several are given."""
  if len(templates) == 1:
    return templates[0]
  return templates[int(example_rng(seed, split, index, PROMPT_PURPOSE).integers(len(templates)))]


def templates_for(prompt_cfg, dataset_name: str) -> list[str]:
  """Templates from config (``prompt.templates``) or the dataset's domain default."""
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
  return [DEFAULT_TEMPLATES[domain]]
