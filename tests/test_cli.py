"""The launcher pattern of experiments/cli.py: --help works, bad flags are one line."""
import subprocess
import sys

import pytest


def _launch(*args):
  return subprocess.run([sys.executable, "-m", "experiments.predict", *args],
                        capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_help_lists_the_flags():
  result = _launch("--help")
  text = result.stdout + result.stderr
  assert "Unknown command line flag" not in text
  assert "--workdir" in text and "--postprocess" in text


@pytest.mark.e2e
def test_an_unknown_flag_is_one_error_line():
  result = _launch("--no_such_flag=1")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == ["error: Unknown command line flag 'no_such_flag'"]
