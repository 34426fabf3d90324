"""A synthetic recommendation world that small models can learn: the embedded default dataset.

SYNTHETIC DATA. Items have titles "<Name> <Genre>": the genre word (so history titles carry a
learnable signal) and a made-up name word unique to the item (so a valid answer must copy a
candidate's name: it cannot be composed from common parts), and a Zipf-like popularity. Users
have a taste over genres (Dirichlet) and a current genre that drifts; each next item is, with
probability `in_genre`, from the current genre, else from anywhere, drawn proportionally to
popularity ** `pop_exponent` among items the user has not consumed yet. The planted popularity
bias (popular items dominate interactions) is what RosePO's popularity-aware negatives target.
Deterministic by seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rosepo_jax.data.records import RawDataset, Window, _windows_of

GENRES = ("Jazz", "Rock", "Folk", "Disco", "Metal", "Opera", "Blues", "Techno", "Reggae", "Swing",
          "Punk", "Soul")
# Bumped whenever build_world's output changes (it is part of the dataset's TFDS config hash).
GENERATOR_VERSION = 2
# Names are two consonant-vowel syllables ("Kamo", "Tilu"): 4,900 distinct words.
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  num_items: int = 240
  num_genres: int = 8
  num_users: int = 600
  min_len: int = 6  # interactions per user (uniform in [min_len, max_len])
  max_len: int = 16
  zipf: float = 1.0  # popularity of the item of popularity rank r ~ 1 / (r + 1) ** zipf
  pop_exponent: float = 1.0
  taste_concentration: float = 0.3  # Dirichlet alpha of a user's genre taste
  drift: float = 0.15  # per-step chance that the current genre is redrawn from the taste
  in_genre: float = 0.85
  val_fraction: float = 0.1
  test_fraction: float = 0.1


def world_problem(cfg: WorldConfig) -> str:
  """What is wrong with `cfg` ("field=value: expected ..."), or "" when a world can be built."""
  if not 1 <= cfg.num_genres <= len(GENRES):
    return f"num_genres={cfg.num_genres}: expected 1..{len(GENRES)}"
  if not 1 <= cfg.num_items <= len(SYLLABLES) ** 2:
    return f"num_items={cfg.num_items}: expected 1..{len(SYLLABLES) ** 2} (the title space)"
  if cfg.num_users < 1:
    return f"num_users={cfg.num_users}: expected >= 1"
  if not 1 <= cfg.min_len <= cfg.max_len:
    return f"min_len={cfg.min_len}, max_len={cfg.max_len}: expected 1 <= min_len <= max_len"
  if cfg.max_len > cfg.num_items // 2:
    return f"max_len={cfg.max_len}: expected at most half the catalogue ({cfg.num_items // 2})"
  for name in ("zipf", "pop_exponent"):
    if getattr(cfg, name) < 0:
      return f"{name}={getattr(cfg, name)}: expected >= 0"
  if cfg.taste_concentration <= 0:
    return f"taste_concentration={cfg.taste_concentration}: expected > 0"
  for name in ("drift", "in_genre", "val_fraction", "test_fraction"):
    if not 0 <= getattr(cfg, name) <= 1:
      return f"{name}={getattr(cfg, name)}: expected in [0, 1]"
  if cfg.val_fraction + cfg.test_fraction >= 1:
    return (f"val_fraction + test_fraction = {cfg.val_fraction + cfg.test_fraction}: expected < 1 "
            "(training users are the rest)")
  return ""


def build_world(cfg: WorldConfig, seed: int, min_history: int = 3, max_history: int = 10
                ) -> RawDataset:
  problem = world_problem(cfg)
  if problem:
    raise ValueError(f"synthetic world: {problem}")
  rng = np.random.default_rng(seed)
  genres = GENRES[:cfg.num_genres]
  item_genre = rng.permutation(np.arange(cfg.num_items) % cfg.num_genres)
  names = rng.choice(len(SYLLABLES) ** 2, size=cfg.num_items, replace=False)
  titles = [f"{SYLLABLES[c // len(SYLLABLES)].title()}{SYLLABLES[c % len(SYLLABLES)]} {genres[g]}"
            for c, g in zip(names.tolist(), item_genre.tolist())]
  ranks = rng.permutation(cfg.num_items)
  popularity = (1.0 / (ranks + 1.0) ** cfg.zipf) ** cfg.pop_exponent
  genre_items = [np.flatnonzero(item_genre == g) for g in range(cfg.num_genres)]

  def draw(pool: np.ndarray, consumed: set[int]) -> int:
    pool = np.array([i for i in pool.tolist() if i not in consumed])
    p = popularity[pool]
    return int(rng.choice(pool, p=p / p.sum()))

  sequences = []
  for _ in range(cfg.num_users):
    taste = rng.dirichlet(np.full(cfg.num_genres, cfg.taste_concentration))
    genre = rng.choice(cfg.num_genres, p=taste)
    consumed: set[int] = set()
    items = []
    for _ in range(rng.integers(cfg.min_len, cfg.max_len + 1)):
      if rng.random() < cfg.drift:
        genre = rng.choice(cfg.num_genres, p=taste)
      in_genre = rng.random() < cfg.in_genre and len(set(genre_items[genre]) - consumed) > 0
      item = draw(genre_items[genre] if in_genre else np.arange(cfg.num_items), consumed)
      consumed.add(item)
      items.append(item)
    sequences.append(items)

  order = rng.permutation(cfg.num_users)
  n_val, n_test = int(cfg.num_users * cfg.val_fraction), int(cfg.num_users * cfg.test_fraction)
  split_users = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
                 "train": order[n_val + n_test:]}
  splits: dict[str, list[Window]] = {}
  for split, users in split_users.items():
    splits[split] = [w for u in sorted(users.tolist())
                     for w in _windows_of(sequences[u], u, min_history, max_history)]
  train_pop = np.bincount([i for u in split_users["train"].tolist() for i in sequences[u]],
                          minlength=cfg.num_items).astype(np.int64)
  return RawDataset(titles, splits, train_pop, 0,
                    info={"genres": list(genres), "item_genre": item_genre.tolist(),
                          "world": dataclasses.asdict(cfg)})
