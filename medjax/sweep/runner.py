"""Running the cells of a sweep: one `python -m experiments.main` subprocess per run.

Each run gets its own workdir; a run whose workdir holds an evaluation is
skipped, so re-running a sweep continues it (an interrupted run resumes from
its checkpoint, as `experiments.main` does). A failed run is reported with the
tail of its stderr and the sweep goes on. On an interrupt (Ctrl-C, or SIGTERM
turned into KeyboardInterrupt by the caller) the running subprocesses get
SIGTERM, which makes `experiments.main` save a checkpoint and stop.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
import threading
from typing import Callable, Optional, Sequence

from tqdm import tqdm

from medjax.sweep.grid import Cell, Override
from medjax.train import workdir as workdir_lib

# The folder holding the `medjax` and `experiments` packages in a source checkout:
# put on the subprocesses' PYTHONPATH so `-m experiments.main` resolves from any cwd.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STDOUT_LOG = "stdout.log"  # a run's stdout and stderr, appended, in its workdir
STDERR_LOG = "stderr.log"

Log = Callable[[str], None]
Runner = Callable[[Cell, str, Sequence[Override]], tuple[bool, str]]


@dataclasses.dataclass
class Outcome:
  """What became of one cell: `status` is "done", "skipped" or "failed" (with `message`)."""
  cell: Cell
  status: str
  message: str = ""


def command(cell: Cell, config_arg: str, sets: Sequence[Override] = ()) -> list[str]:
  """The `experiments.main` command line of one run: `--set`s, then the cell's values and seed."""
  overrides = list(sets) + list(cell.overrides) + [("seed", str(cell.seed))]
  return ([sys.executable, "-m", "experiments.main", f"--config={config_arg}",
           f"--workdir={cell.workdir}"] + [f"--config.{f}={v}" for f, v in overrides])


def is_finished(cell: Cell) -> bool:
  """Whether the run has written its evaluation (then the sweep skips it)."""
  return workdir_lib.Workdir(cell.workdir).has_eval()


def _tail(path: str, start: int, lines: int = 8) -> str:
  """The last `lines` non-empty lines written to `path` after byte `start`."""
  try:
    with open(path, "rb") as f:
      f.seek(start)
      text = f.read().decode("utf-8", "replace")
  except OSError:
    return ""
  # progress bars redraw with carriage returns: keep the last state of each line
  rows = [r.split("\r")[-1].rstrip() for r in text.split("\n")]
  return "\n".join([r for r in rows if r.strip()][-lines:])


class _Children:
  """The running subprocesses, so that an interrupted sweep can stop them cleanly."""

  def __init__(self):
    self._procs: set[subprocess.Popen] = set()
    self._lock = threading.Lock()
    self._stopping = threading.Event()

  def start(self, args: list[str], **kwargs) -> Optional[subprocess.Popen]:
    """`Popen(args)`, or None once `stop_all` has begun."""
    with self._lock:
      if self._stopping.is_set():
        return None
      proc = subprocess.Popen(args, **kwargs)
      self._procs.add(proc)
      return proc

  def forget(self, proc: subprocess.Popen) -> None:
    with self._lock:
      self._procs.discard(proc)

  def reset(self) -> None:
    self._stopping.clear()

  def stop_all(self) -> None:
    """SIGTERM to every running child at once, then wait for each (see `stop`)."""
    with self._lock:
      self._stopping.set()
      procs = list(self._procs)
    for proc in procs:
      if proc.poll() is None:
        proc.terminate()
    for proc in procs:
      stop(proc)


_children = _Children()


def stop(proc: subprocess.Popen, timeout: float = 120.0) -> None:
  """SIGTERM (experiments.main saves a checkpoint and exits), then SIGKILL after `timeout` s."""
  if proc.poll() is None:
    proc.terminate()
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def run_cell(cell: Cell, config_arg: str, sets: Sequence[Override] = ()) -> tuple[bool, str]:
  """Runs one cell as an `experiments.main` subprocess; `(ok, stderr tail)`.

  stdout/stderr are appended to `stdout.log`/`stderr.log` in the run's workdir.
  """
  os.makedirs(cell.workdir, exist_ok=True)
  env = dict(os.environ)
  env["PYTHONPATH"] = SOURCE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  err_path = os.path.join(cell.workdir, STDERR_LOG)
  start = os.path.getsize(err_path) if os.path.exists(err_path) else 0
  with open(os.path.join(cell.workdir, STDOUT_LOG), "ab") as out, open(err_path, "ab") as err:
    proc = _children.start(command(cell, config_arg, sets), stdout=out, stderr=err, env=env)
    if proc is None:
      return False, "not started: the sweep was interrupted"
    try:
      rc = proc.wait()
    except BaseException:  # interrupted: let the run save its checkpoint before going on
      stop(proc)
      raise
    finally:
      _children.forget(proc)
  tail = _tail(err_path, start)
  if rc != 0:
    return False, f"exit status {rc}" + (f"\n{tail}" if tail else "")
  return True, tail


def run_sweep(grid: Sequence[Cell], config_arg: str, sets: Sequence[Override] = (), *,
              parallel_runs: int = 1, runner: Runner = run_cell, log: Log = print,
              progress: bool = False) -> list[Outcome]:
  """Runs every unfinished cell of `grid` with `runner` (`parallel_runs` at a time).

  Args:
    grid: the runs, from `grid.cells`.
    config_arg: the `--config` value passed to every run.
    sets: overrides passed to every run.
    parallel_runs: runs executed at the same time (threads waiting on subprocesses).
    runner: runs one cell, `(ok, message)`; `run_cell` or a stand-in in tests.
    log: receives one string per event (a run starts, ends or fails; skipped runs).
    progress: show a progress bar on stderr (for a terminal) instead of the
      per-run start/end lines; skipped runs and failures are still logged.
  Returns:
    One `Outcome` per cell of `grid`, in grid order. A run that reports
    success but left no evaluation behind is a failure.
  """
  finished = {c for c in grid if is_finished(c)}
  todo = [c for c in grid if c not in finished]
  outcomes = {c: Outcome(c, "skipped", f"{workdir_lib.EVAL} exists") for c in grid if c in finished}
  if outcomes:
    log(f"{len(outcomes)} of {len(grid)} run(s) already finished: skipped")
  bar = tqdm(total=len(todo), unit="run", file=sys.stderr, dynamic_ncols=True) if progress else None
  say = (lambda text: bar.write(text, file=sys.stderr)) if bar else log
  lock = threading.Lock()

  def one(index_cell: tuple[int, Cell]) -> Outcome:
    index, cell = index_cell
    label = f"[{index + 1}/{len(todo)}] {cell.name} seed {cell.seed}"
    if not bar:
      log(f"{label}: running in {cell.workdir}")
    try:
      ok, message = runner(cell, config_arg, sets)
    except OSError as e:
      ok, message = False, f"could not start: {e}"
    if ok and not is_finished(cell):
      ok, message = False, (f"ended without writing {workdir_lib.EVAL} (stopped?); re-run to resume\n"
                            + message)
    with lock:
      if bar:
        bar.update(1)
      if ok and not bar:
        log(f"{label}: done")
      elif not ok:
        say(f"{label}: FAILED ({cell.workdir})\n" + "\n".join("    " + l for l in message.splitlines()))
    return Outcome(cell, "done") if ok else Outcome(cell, "failed", message)

  _children.reset()
  pool = concurrent.futures.ThreadPoolExecutor(parallel_runs) if parallel_runs > 1 else None
  try:
    results = pool.map(one, enumerate(todo)) if pool else map(one, enumerate(todo))
    for outcome in results:
      outcomes[outcome.cell] = outcome
  except KeyboardInterrupt:
    _children.stop_all()  # each run saves a checkpoint and stops; a re-run resumes it
    raise
  finally:
    if pool:
      pool.shutdown(wait=True, cancel_futures=True)
    if bar:
      bar.close()
  return [outcomes[c] for c in grid]
