"""The one exception type for bad user input.

Raised for a corrupt or mismatched file, a wrong channel count, labels out of
range, NaN intensities or an impossible config. Its message is one line that
names the file or config field and says what was expected; the command-line
launchers print it as `error: <message>` and exit with status 2, without a
stack trace.
"""


class InputError(ValueError):
  """Bad input from the user: a file, a flag or a config field."""
