"""Runs one measurement in a fresh Python process, so that nothing else is resident in it.

`run("benchmarks.memory.prepare", spec)` starts `python -c ...` at the repository root,
calls that module's `child_main(json.dumps(spec))` there and returns the dict it
returned (sent back as the last line of the child's stdout). An `InputError` in the
child comes back as an `InputError` with the same one-line message; any other failure
raises `subprocess.CalledProcessError` with the child's stderr.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from medjax.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_EXIT_INPUT_ERROR = 2
_CHILD = """
import importlib, json, sys
from medjax.errors import InputError
try:
  result = importlib.import_module(sys.argv[1]).child_main(sys.argv[2])
except InputError as e:
  print(f"error: {e}".splitlines()[0], file=sys.stderr)
  sys.exit(%d)
print(json.dumps(result))
""" % _EXIT_INPUT_ERROR


def run(module: str, spec: dict) -> dict:
  """`module.child_main(json.dumps(spec))` in a fresh process (see the module docstring)."""
  proc = subprocess.run([sys.executable, "-c", _CHILD, module, json.dumps(spec)], cwd=REPO,
                        capture_output=True, text=True)
  if proc.returncode == _EXIT_INPUT_ERROR:
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    if errors:
      raise InputError(errors[-1][len("error: "):])
  if proc.returncode:
    raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
  return json.loads(proc.stdout.strip().splitlines()[-1])
