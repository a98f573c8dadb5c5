"""The one launcher pattern: bad flags, configs and input end in one `error:` line, exit 2.

Every launcher in `experiments/` defines its flags at import, has a
`main(argv)` that calls one library function, and ends with

  if __name__ == "__main__":
    cli.run(main)

`main` turns the library's `InputError` into `cli.exit_with_error(e)`.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence, Type

from absl import app, flags

EXIT_BAD_INPUT = 2


def exit_with_error(error: object) -> NoReturn:
  """Prints the first line of `error` (an exception or a message) as `error: ...` on stderr and
  exits with status 2; an `InputError`'s `details` (one line per bad item) come first."""
  for line in getattr(error, "details", ()):
    print(line, file=sys.stderr)
  print(f"error: {error}".splitlines()[0], file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


def parse_numbers(flag: str, values: Sequence[str], kind: Type = int) -> tuple:
  """The items of a comma-separated list flag (`flags.DEFINE_list`) as numbers of `kind`.

  Raises:
    InputError: an item that is not such a number, naming the flag (one line).
  """
  from medjax.errors import InputError  # pylint: disable=import-outside-toplevel
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    raise InputError(f"--{flag}={','.join(values)}: expected comma-separated "
                     f"{'integers' if kind is int else 'numbers'}") from None


def run(main: Callable[[list[str]], object]) -> None:
  """`app.run(main)`, with flag/config parsing errors printed as `error: ...` (exit 2)."""
  app.define_help_flags()  # --help/--helpfull, which app.run would define after our parse
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:
    exit_with_error(e)
  except (AttributeError, KeyError) as e:  # an override of a field the config lacks
    overrides = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
    exit_with_error(f"unknown config field {e} (overrides given: {', '.join(overrides)}); "
                    "see the config file for the fields")
  except (TypeError, ValueError, OSError) as e:  # a wrong type, or an unreadable config file
    exit_with_error(e)
  app.run(main, argv=argv)
