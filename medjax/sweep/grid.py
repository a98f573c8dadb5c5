"""The grid of an ablation sweep: `--sweep`/`--set`/`--seeds` specs -> the runs (`Cell`s).

A sweep is the product of the swept config fields' values; each combination
(a cell, one folder) runs once per seed. This module only parses and names;
`medjax.sweep.runner` runs the cells.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
from typing import Sequence

from medjax import config_files
from medjax.errors import InputError

Override = tuple[str, str]  # (config field, value as written on the command line)


class SweepError(InputError):
  """A bad --sweep/--set/--seeds/--parallel_runs value or config field.

  An `InputError`: the launcher prints it as one `error: ...` line (exit 2).
  """


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid: swept `(field, value)` pairs and a seed.

  `name` is the cell's folder (shared by its seeds), `workdir` the run's folder
  `<sweep dir>/<name>/seed_<seed>`.
  """
  name: str
  overrides: tuple[Override, ...]
  seed: int
  workdir: str


def split_values(text: str) -> list[str]:
  """`a,b,(1,2)` -> `["a", "b", "(1,2)"]`: commas inside brackets/quotes do not split."""
  values, depth, quote, current = [], 0, None, []
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      values.append("".join(current).strip())
      current = []
      continue
    current.append(ch)
  values.append("".join(current).strip())
  return values


def _field_value(spec: str, flag: str) -> Override:
  """`[config.]a.b=VALUE` -> `("a.b", "VALUE")`; SweepError naming `--<flag>` otherwise."""
  if "=" not in spec:
    raise SweepError(f"--{flag}={spec!r}: expected FIELD=VALUE{',VALUE...' if flag == 'sweep' else ''}")
  field, value = (part.strip() for part in spec.split("=", 1))
  if field.startswith("config."):
    field = field[len("config."):]
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", field):
    raise SweepError(f"--{flag}={spec!r}: {field!r} is not a config field name (e.g. loss.name)")
  return field, value


def parse_sweep(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
  """`["loss.name=ce,dice", "model.norm=none,batch"]` -> `[("loss.name", ["ce", "dice"]), ...]`.

  Raises SweepError for a spec without `=`, an empty value list or value,
  a repeated field, a repeated value, or the field `seed` (use --seeds).
  """
  out, seen = [], set()
  for spec in specs:
    field, text = _field_value(spec, "sweep")
    values = split_values(text) if text else []
    if not values or any(not v for v in values):
      raise SweepError(f"--sweep={spec!r}: expected a non-empty comma-separated list of values")
    if field == "seed":
      raise SweepError(f"--sweep={spec!r}: seeds are set by --seeds (config.seed = 0 .. seeds-1)")
    if field in seen:
      raise SweepError(f"--sweep: field {field!r} is swept twice; give its values in one --sweep")
    if len(set(values)) != len(values):
      raise SweepError(f"--sweep={spec!r}: a value is repeated")
    seen.add(field)
    out.append((field, values))
  return out


def parse_sets(specs: Sequence[str], swept: Sequence[str] = ()) -> list[Override]:
  """`["num_steps=200"]` -> `[("num_steps", "200")]`; a field also swept (or `seed`) is an error."""
  out = []
  for spec in specs:
    field, value = _field_value(spec, "set")
    if field in swept or field == "seed":
      raise SweepError(f"--set={spec!r}: {field!r} is set by "
                       f"{'--seeds' if field == 'seed' else '--sweep'}")
    out.append((field, value))
  return out


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def cell_name(overrides: Sequence[Override]) -> str:
  """`[("loss.name", "ce"), ("model.norm", "batch")]` -> `loss.name=ce__model.norm=batch`."""
  return "__".join(_safe(f"{f}={v}") for f, v in overrides) or "default"


def cells(sweeps: Sequence[tuple[str, Sequence[str]]], seeds: int, workdir: str) -> list[Cell]:
  """The runs of the grid, in order: product of the sweeps (first varies slowest), then seeds.

  Raises SweepError for `seeds < 1` and for two value combinations whose
  folder names collide after `cell_name`'s character replacement.
  """
  if seeds < 1:
    raise SweepError(f"--seeds={seeds}: expected at least 1")
  fields = [f for f, _ in sweeps]
  out, names = [], {}
  for combo in itertools.product(*[values for _, values in sweeps]):
    overrides = tuple(zip(fields, combo))
    name = cell_name(overrides)
    if name in names and names[name] != overrides:
      raise SweepError(f"--sweep: values {dict(names[name])} and {dict(overrides)} both map to "
                       f"the folder name {name!r}")
    names[name] = overrides
    for seed in range(seeds):
      out.append(Cell(name, overrides, seed, os.path.join(workdir, name, f"seed_{seed}")))
  return out


def check_fields(config_arg: str, fields: Sequence[str]) -> None:
  """Loads the config file (`path.py[:variant]`) and checks that every field exists.

  This catches a typo once, before any run starts, instead of in every run.
  """
  try:
    config = config_files.load(config_arg)
  except InputError as e:
    raise SweepError(str(e)) from None
  for field in fields:
    node = config
    for part in field.split("."):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        raise SweepError(f"config field {field!r} does not exist in {config_arg}; "
                         "see the config file for the fields") from None
