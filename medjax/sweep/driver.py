"""One ablation sweep from its command-line values: check, run every cell, write the table.

`sweep()` is what `python -m experiments.sweep` calls: it validates every
spec and config field before starting any run, runs the grid
(`medjax.sweep.runner`), and writes `results.csv/md/png`
(`medjax.sweep.report`), also after an interrupt, so the table always shows
what has finished.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional, Sequence

from medjax.sweep import grid as grid_lib
from medjax.sweep import report, runner

EXIT_OK = 0
EXIT_FAILED_RUNS = 1
EXIT_INTERRUPTED = 130


def _print(text: str) -> None:
  print(text, flush=True)


def _error(text: str) -> None:
  print(f"error: {text}", file=sys.stderr, flush=True)


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
  """SIGTERM (pre-emption) raises KeyboardInterrupt, so the runs are stopped cleanly too."""
  if threading.current_thread() is not threading.main_thread():
    yield  # signal handlers can only be set from the main thread
    return
  previous = signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def sweep(config_arg: str, workdir: str, *, sweeps: Sequence[str], sets: Sequence[str] = (),
          seeds: int = 1, parallel_runs: int = 1, command_line: str = "",
          progress: Optional[bool] = None, log: Callable[[str], None] = _print) -> int:
  """Runs the grid of `sweeps` x `seeds` and writes the results table into `workdir`.

  Args:
    config_arg: the config file of every run, `path.py[:variant]`.
    workdir: the sweep folder: `<cell>/seed_<i>/` per run, plus `results.*`.
    sweeps: `FIELD=V1,V2,...` specs (the grid is their product).
    sets: `FIELD=VALUE` overrides applied to every run.
    seeds: runs per cell, with `config.seed = 0 .. seeds-1`.
    parallel_runs: runs executed at the same time.
    command_line: written into `results.md`.
    progress: a progress bar instead of per-run lines; default: when stderr is a terminal.
    log: receives the progress lines (default: printed to stdout).
  Returns:
    The exit status: 0 when every run finished, 1 when some failed (named on
    stderr), 130 when interrupted (the runs saved checkpoints; re-running the
    same command continues).
  Raises:
    SweepError (an InputError): a bad spec, seed count or config field; raised
      before anything is created.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if parallel_runs < 1:
    raise grid_lib.SweepError(f"--parallel_runs={parallel_runs}: expected at least 1")
  swept = grid_lib.parse_sweep(sweeps)
  overrides = grid_lib.parse_sets(sets, [f for f, _ in swept])
  grid = grid_lib.cells(swept, seeds, workdir)
  grid_lib.check_fields(config_arg, [f for f, _ in swept] + [f for f, _ in overrides])
  os.makedirs(workdir, exist_ok=True)
  log(f"sweep: {len(grid) // seeds} cell(s) x {seeds} seed(s) = {len(grid)} run(s) in {workdir}")
  if progress is None:
    progress = sys.stderr.isatty()
  try:
    with _sigterm_interrupts():
      outcomes = runner.run_sweep(grid, config_arg, overrides, parallel_runs=parallel_runs,
                                  log=log, progress=progress)
  except KeyboardInterrupt:
    report.write_results(workdir, grid, command_line=command_line)
    _error(f"sweep interrupted; the runs saved checkpoints; re-run the same command to "
           f"continue (results so far in {workdir}/results.md)")
    return EXIT_INTERRUPTED
  paths = report.write_results(workdir, grid, command_line=command_line, outcomes=outcomes)
  log(f"results: {paths['md']}, {paths['csv']}, {paths['png']}")
  failed = [o for o in outcomes if o.status == "failed"]
  if failed:
    _error(f"{len(failed)} of {len(grid)} run(s) failed: "
           + ", ".join(os.path.relpath(o.cell.workdir, workdir) for o in failed))
    return EXIT_FAILED_RUNS
  return EXIT_OK
