"""The sweep's results table: `results.csv`, `results.md` and `results.png` from aggregated rows.

Rows come from `medjax.sweep.aggregate.aggregate`. Every file is written
through `medjax.train.workdir.atomic_write`, so an interrupted sweep never
leaves a truncated table.
"""
from __future__ import annotations

import csv
import datetime
import io
import os
from typing import Sequence

from medjax.sweep.aggregate import aggregate
from medjax.sweep.grid import Cell
from medjax.sweep.runner import STDERR_LOG, Outcome
from medjax.train.workdir import EVAL, atomic_write, atomic_write_text

STATS = ("mean", "std")


def _fields(rows: Sequence[dict]) -> list[str]:
  return list(rows[0]["fields"]) if rows else []


def write_csv(path: str, metrics: Sequence[str], rows: Sequence[dict]) -> str:
  """One line per cell: the swept values, `<metric> mean`, `<metric> std`, ..., `n_seeds`.

  A metric a cell lacks is an empty field.
  """
  fields = _fields(rows)
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(fields + [f"{m} {s}" for m in metrics for s in STATS] + ["n_seeds"])
  for row in rows:
    stats = [row[s].get(m, "") for m in metrics for s in STATS]
    writer.writerow([row["fields"][k] for k in fields] + stats + [row["n_seeds"]])
  return atomic_write_text(path, text.getvalue())


def write_markdown(path: str, metrics: Sequence[str], rows: Sequence[dict], *, command_line: str,
                   failed: Sequence[Outcome] = ()) -> str:
  """The table as `mean ± std` (3 decimals, `–` where a cell lacks the metric).

  With the command line, the date, and the failed runs' workdirs with the
  first line of their error.
  """
  fields = _fields(rows)
  entry = lambda row, m: (f"{row['mean'][m]:.3f} ± {row['std'][m]:.3f}" if m in row["mean"] else "–")
  lines = [
      "# Sweep results", "",
      f"Command: `{command_line}`", "",
      f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}", "",
      f"Each entry is the mean ± sample std over seeds of the metric in the runs' `{EVAL}` "
      "(means over the test cases).", "",
      "| " + " | ".join(fields + list(metrics) + ["n_seeds"]) + " |",
      "|" + "---|" * len(fields) + "---:|" * (len(metrics) + 1),
  ]
  for row in rows:
    lines.append("| " + " | ".join([f"`{row['fields'][f]}`" for f in fields] +
                                   [entry(row, m) for m in metrics] + [str(row["n_seeds"])]) + " |")
  if failed:
    lines += ["", f"Failed runs (see `{STDERR_LOG}` in each):", ""]
    lines += [f"- `{o.cell.workdir}`: {o.message.splitlines()[0] if o.message else ''}" for o in failed]
  return atomic_write_text(path, "\n".join(lines) + "\n")


def write_plot(path: str, metrics: Sequence[str], rows: Sequence[dict]) -> str:
  """Grouped bars: one group per cell, one bar per `dice/*` metric, std error bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel  # slow; only when drawing
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  dice = [m for m in metrics if m.startswith("dice/")]
  fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) * max(len(dice), 1) * 0.5 + 2), 4))
  width = 0.8 / max(len(dice), 1)
  for j, metric in enumerate(dice):
    xs = [i + (j - (len(dice) - 1) / 2) * width for i in range(len(rows))]
    ax.bar(xs, [r["mean"].get(metric, float("nan")) for r in rows], width,
           yerr=[r["std"].get(metric, 0.0) for r in rows], capsize=3, label=metric)
  labels = ["\n".join(f"{k}={v}" for k, v in r["fields"].items()) or r["cell"] for r in rows]
  ax.set_xticks(range(len(rows)))
  ax.set_xticklabels(labels, fontsize=8)
  ax.set_ylabel("Dice (mean ± std over seeds)")
  ax.set_ylim(0, 1)
  if dice:
    ax.legend(fontsize=8)
  fig.tight_layout()
  try:
    with atomic_write(path) as tmp:
      fig.savefig(tmp, dpi=100)
  finally:
    plt.close(fig)
  return path


def write_results(workdir: str, grid: Sequence[Cell], *, command_line: str,
                  outcomes: Sequence[Outcome] = ()) -> dict[str, str]:
  """Aggregates `grid` into `results.csv`, `results.md` and `results.png` in `workdir`.

  Returns the paths by extension (`{"csv": ..., "md": ..., "png": ...}`).
  """
  metrics, rows = aggregate(grid)
  paths = {k: os.path.join(workdir, f"results.{k}") for k in ("csv", "md", "png")}
  write_csv(paths["csv"], metrics, rows)
  write_markdown(paths["md"], metrics, rows, command_line=command_line,
                 failed=[o for o in outcomes if o.status == "failed"])
  write_plot(paths["png"], metrics, rows)
  return paths
