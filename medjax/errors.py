"""The one exception type for bad user input.

Raised for a corrupt or mismatched file, a wrong channel count, labels out of
range, NaN intensities or an impossible config. Its message is one line that
names the file or config field and says what was expected; the command-line
launchers print it as `error: <message>` and exit with status 2, without a
stack trace. An error about several items (e.g. every bad case of a dataset
folder) carries one line per item in `details`, which the launchers print
before the `error:` line.
"""
from __future__ import annotations

from typing import Sequence


class InputError(ValueError):
  """Bad input from the user: a file, a flag or a config field.

  Args:
    message: one line naming the input and what was expected.
    details: one line per offending item, shown before `message`.
  """

  def __init__(self, message: str = "", *, details: Sequence[str] = ()):
    super().__init__(message)
    self.details = tuple(str(line) for line in details)
