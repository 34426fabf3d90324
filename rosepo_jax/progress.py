"""Progress bars for the loops that can run for more than a few seconds (decoding, scoring,
oracle epochs, export, training): count, rate and ETA on stderr (tqdm), from process 0 only."""

from __future__ import annotations

import tqdm

from rosepo_jax import multihost


def bar(total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True,
        **kwargs) -> tqdm.tqdm:
  """A tqdm bar over `total` `unit`s; disabled on processes other than 0 or when not `enabled`."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                   disable=not enabled or not multihost.is_leader(), **kwargs)
