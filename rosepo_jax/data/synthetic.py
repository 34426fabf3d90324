"""A synthetic recommendation world that small models can learn: the embedded default dataset.

SYNTHETIC DATA. Items have titles "<Name> <Genre>": the genre word (so history titles carry a
learnable signal) and a made-up name word unique to the item (so a valid answer must copy a
candidate's name: it cannot be composed from common parts), and a Zipf-like popularity. Users
have a taste over genres (Dirichlet) and a current genre that drifts; each next item is, with
probability `in_genre`, from the current genre, else from anywhere, drawn proportionally to
popularity ** `pop_exponent` among items the user has not consumed yet. The planted popularity
bias (popular items dominate interactions) is what RosePO's popularity-aware negatives target.
With `exposure_noise` > 0, that share of interactions are random exposures instead (uniform over
the unconsumed items). Deterministic by seed.

The world knows the truth: `world_truth` gives, for every window, each item's true probability of
being the next one given the user's latent state (taste, current genre, consumed items), from
which follow the Bayes-optimal HitRatio@1 no recommender can pass (`metrics.bayes_hit_ratio`) and
the ideal smoothing factor of a pair (`oracle.world_eps`).
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
  # The share of interactions that are random exposures (uniform over the unconsumed items)
  # rather than drawn from taste: chosen answers that are noise, rejected ones truly preferred.
  exposure_noise: float = 0.0


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
  for name in ("drift", "in_genre", "val_fraction", "test_fraction", "exposure_noise"):
    if not 0 <= getattr(cfg, name) <= 1:
      return f"{name}={getattr(cfg, name)}: expected in [0, 1]"
  if cfg.val_fraction + cfg.test_fraction >= 1:
    return (f"val_fraction + test_fraction = {cfg.val_fraction + cfg.test_fraction}: expected < 1 "
            "(training users are the rest)")
  return ""


def next_item_probs(cfg: WorldConfig, popularity: np.ndarray, genre_items: list[np.ndarray],
                    taste: np.ndarray, genre: int, consumed: np.ndarray) -> np.ndarray:
  """The true probability [num_items] of each item being a user's next one, given the latent
  state the generator draws it from: the taste [G], the current genre before this step's drift
  and the consumed items (a bool mask). It marginalises this step's drift (the genre is redrawn
  from the taste with probability `drift`), the in-genre draw (only while the genre has
  unconsumed items) and a random exposure (probability `exposure_noise`, uniform over the
  unconsumed items), exactly as `build_world` draws."""
  free = ~consumed
  weights = np.where(free, popularity, 0.0)
  anywhere = weights / weights.sum()
  genre_p = cfg.drift * taste
  genre_p[genre] += 1.0 - cfg.drift
  out = np.zeros(len(popularity))
  for g, p_g in enumerate(genre_p):
    if p_g == 0:
      continue
    in_genre = np.zeros(len(popularity))
    in_genre[genre_items[g]] = weights[genre_items[g]]
    if in_genre.sum() > 0:
      out += p_g * (cfg.in_genre * in_genre / in_genre.sum() + (1 - cfg.in_genre) * anywhere)
    else:
      out += p_g * anywhere
  return (1 - cfg.exposure_noise) * out + cfg.exposure_noise * free / free.sum()


@dataclasses.dataclass(frozen=True)
class LatentState:
  """What a user's next item is drawn from (`next_item_probs`): taste [G], the current genre
  before the step's drift, and the items consumed so far."""
  taste: np.ndarray
  genre: int
  consumed: frozenset[int]


def _simulate(cfg: WorldConfig, seed: int, record: bool):
  """The generator: (titles, genres, item genre [I], popularity [I], each user's items, the users
  of each split, and with `record` each user's latent state before each step)."""
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

  sequences, states = [], []
  for _ in range(cfg.num_users):
    taste = rng.dirichlet(np.full(cfg.num_genres, cfg.taste_concentration))
    genre = rng.choice(cfg.num_genres, p=taste)
    consumed: set[int] = set()
    items, user_states = [], []
    for _ in range(rng.integers(cfg.min_len, cfg.max_len + 1)):
      if record:
        user_states.append(LatentState(taste, int(genre), frozenset(consumed)))
      if rng.random() < cfg.drift:
        genre = rng.choice(cfg.num_genres, p=taste)
      in_genre = rng.random() < cfg.in_genre and len(set(genre_items[genre]) - consumed) > 0
      # Drawn only when asked for: a world without exposures is the one drawn before the knob.
      if cfg.exposure_noise and rng.random() < cfg.exposure_noise:
        item = int(rng.choice([i for i in range(cfg.num_items) if i not in consumed]))
      else:
        item = draw(genre_items[genre] if in_genre else np.arange(cfg.num_items), consumed)
      consumed.add(item)
      items.append(item)
    sequences.append(items)
    states.append(user_states)

  order = rng.permutation(cfg.num_users)
  n_val, n_test = int(cfg.num_users * cfg.val_fraction), int(cfg.num_users * cfg.test_fraction)
  split_users = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
                 "train": order[n_val + n_test:]}
  return (titles, genres, item_genre, popularity, sequences, split_users,
          states if record else None)


def build_world(cfg: WorldConfig, seed: int, min_history: int = 3, max_history: int = 10
                ) -> RawDataset:
  titles, genres, item_genre, _, sequences, split_users, _ = _simulate(cfg, seed, record=False)
  splits: dict[str, list[Window]] = {}
  for split, users in split_users.items():
    splits[split] = [w for u in sorted(users.tolist())
                     for w in _windows_of(sequences[u], u, min_history, max_history)]
  train_pop = np.bincount([i for u in split_users["train"].tolist() for i in sequences[u]],
                          minlength=cfg.num_items).astype(np.int64)
  return RawDataset(titles, splits, train_pop, 0,
                    info={"genres": list(genres), "item_genre": item_genre.tolist(),
                          "world": dataclasses.asdict(cfg)})


def world_truth(cfg: WorldConfig, seed: int, min_history: int = 3, max_history: int = 10
                ) -> dict[str, np.ndarray]:
  """For each split, the true next-item probabilities [windows, num_items] (float32) of every
  window `build_world` makes, in its order (a window's row: `next_item_probs` at its target's
  step). Deterministic: the world is drawn again with the same seed."""
  _, _, item_genre, popularity, sequences, split_users, states = _simulate(cfg, seed, record=True)
  genre_items = [np.flatnonzero(item_genre == g) for g in range(cfg.num_genres)]

  def probs(state: LatentState) -> np.ndarray:
    consumed = np.zeros(cfg.num_items, bool)
    consumed[list(state.consumed)] = True
    return next_item_probs(cfg, popularity, genre_items, state.taste, state.genre, consumed)

  out = {}
  for split, users in split_users.items():
    rows = [probs(states[u][i]) for u in sorted(users.tolist())
            for i in range(min_history, len(sequences[u]))]
    out[split] = np.asarray(rows, np.float32).reshape(len(rows), cfg.num_items)
  return out


def latent_states(cfg: WorldConfig, seed: int) -> tuple[np.ndarray, list[np.ndarray],
                                                        list[list[LatentState]], list[list[int]]]:
  """(popularity [I], the items of each genre, each user's latent state before each step, each
  user's items): the world's hidden side, for checking `next_item_probs`."""
  _, _, item_genre, popularity, sequences, _, states = _simulate(cfg, seed, record=True)
  return (popularity, [np.flatnonzero(item_genre == g) for g in range(cfg.num_genres)], states,
          sequences)
