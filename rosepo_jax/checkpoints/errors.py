"""What goes wrong with a model file given to us: the project's input errors for checkpoints.

Each message names the file (and the field or tensor); the launchers print it as one line.
"""

from rosepo_jax.errors import InputError


class CheckpointError(InputError, ValueError):
  """A model or tokenizer file that is malformed, truncated or unsupported."""


class CheckpointNotFoundError(InputError, FileNotFoundError):
  """A model or tokenizer path that holds no model (or no tokenizer)."""
