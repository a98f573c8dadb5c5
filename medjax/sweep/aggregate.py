"""Aggregation over seeds: the mean and sample std of every scalar metric of each cell.

The numbers come from each run's evaluation (`Workdir.read_eval`): the
`metric/class` means over the test cases. Per-case lists and `*_missing`
counts are not aggregated.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from medjax.errors import InputError
from medjax.sweep.grid import Cell
from medjax.train.workdir import Workdir


def scalar_metrics(results: dict) -> dict[str, Optional[float]]:
  """The scalar metrics of an evaluation dict, without `per_case` and `*_missing` counts.

  A metric may be None (e.g. the distance to a structure the run missed).
  """
  out = {}
  for key, value in results.items():
    if key == "per_case" or key.endswith("_missing") or isinstance(value, bool):
      continue
    if isinstance(value, (int, float)) or value is None:
      out[key] = value
  return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


def aggregate(grid: Sequence[Cell]) -> tuple[list[str], list[dict]]:
  """Means and stds over seeds of every scalar metric of each cell's evaluation.

  Returns `(metrics, rows)`: `metrics` in order of first appearance; one row
  per cell (in grid order) with `"cell"`, `"fields"` (`{field: value}`),
  `"n_seeds"` (runs with a readable evaluation) and `"mean"`/`"std"`
  (`{metric: float}`; a metric that is None in a run, e.g. the distance to a
  missed structure, is averaged over the runs that have it, and left out when
  none has). std is the sample standard deviation (ddof=1), 0.0 for one value.
  """
  metrics: list[str] = []
  by_cell: dict[str, dict] = {}
  for cell in grid:
    row = by_cell.setdefault(cell.name, {"cell": cell.name, "fields": dict(cell.overrides),
                                         "values": {}, "n_seeds": 0})
    workdir = Workdir(cell.workdir)
    if not workdir.has_eval():
      continue
    try:
      results = workdir.read_eval()
    except InputError:  # unreadable (e.g. being written by hand): counted as not finished
      continue
    row["n_seeds"] += 1
    for key, value in scalar_metrics(results).items():
      if key not in metrics:
        metrics.append(key)
      if value is not None and math.isfinite(value):
        row["values"].setdefault(key, []).append(float(value))
  rows = []
  for row in by_cell.values():
    stats = {k: _mean_std(v) for k, v in row.pop("values").items()}
    row["mean"] = {k: m for k, (m, _) in stats.items()}
    row["std"] = {k: s for k, (_, s) in stats.items()}
    rows.append(row)
  return metrics, rows
