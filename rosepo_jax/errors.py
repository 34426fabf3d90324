"""The errors that mean "the input is wrong", not "the program is": a bad config value, a
malformed data file, a destination we may not replace, a stage run out of order. Their message
names the file, line, field or config key and what was expected; the launchers print it as one
line and exit with code 2, without a traceback (`--verbosity=1` shows it).
"""


class InputError(Exception):
  """Base (mixin) of every error whose message alone tells the user what to fix."""
