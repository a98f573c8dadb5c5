"""Runs an absl `main` so that bad flags and configs end in one line, not a traceback."""
from __future__ import annotations

import sys

from absl import app, flags


def run_main(main) -> None:
  """`app.run(main)`, with flag/config parsing errors printed as `error: ...` (exit 2)."""
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # an override of a field the config lacks
    overrides = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
    print(f"error: unknown config field {e} (overrides given: {', '.join(overrides)}); "
          "see the config file for the fields", file=sys.stderr)
    sys.exit(2)
  except (TypeError, ValueError, OSError) as e:  # a wrong type, or an unreadable config file
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)
