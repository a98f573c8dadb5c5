r"""Ablation grids: every combination of swept config values x seeds -> one results table.

  python -m experiments.sweep --config=experiments/configs/unet3d_synthetic.py \
      --sweep='loss.name=ce,wce,dice,gdl,gwdl' [--sweep='model.norm=none,batch' ...] \
      --seeds=3 --workdir=runs/loss_ablation [--parallel_runs=1] [--set=num_steps=200 ...]

The grid is the product of the `--sweep` fields' values; each cell runs once
per seed (seed i sets `config.seed=i`) as its own
`python -m experiments.main --workdir=DIR/<cell>/seed_<i> --config.<field>=<value> ...`
subprocess (`--parallel_runs` at a time), with every `--set` override added.
A run whose `eval.json` exists is skipped, and an interrupted run resumes
from its checkpoint, so re-running the same command continues the sweep.
A failed run is reported with the tail of its stderr (the full logs are
`stdout.log`/`stderr.log` in its workdir) and the sweep goes on; the exit
status is 1 if any run failed, 2 for bad flags.

Writes `DIR/results.csv` (per cell: the swept values, `<metric> mean` and
`<metric> std` over seeds for every scalar metric of `eval.json`, `n_seeds`),
`DIR/results.md` (the same as `mean ± std`, with the command and date) and
`DIR/results.png` (the `dice/*` means per cell, with std error bars). The std
is the sample standard deviation over seeds (ddof=1; 0 for a single seed).

Values are split at commas outside brackets, so `--sweep='patch_size=(8,16,16),(16,32,32)'`
sweeps two tuples.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import datetime
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from typing import Callable, Sequence

from absl import app, flags

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SweepError(ValueError):
  """A bad --sweep/--set/--seeds value; printed as one `error: ...` line (exit 2)."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid: swept `(field, value)` pairs and a seed.

  `name` is the cell's folder (shared by its seeds), `workdir` the run's folder
  `<sweep dir>/<name>/seed_<seed>`.
  """
  name: str
  overrides: tuple[tuple[str, str], ...]
  seed: int
  workdir: str


@dataclasses.dataclass
class Outcome:
  cell: Cell
  status: str  # "done" | "skipped" | "failed"
  message: str = ""


# ------------------------------------------------------------ the grid ---

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


def _field_value(spec: str, flag: str) -> tuple[str, str]:
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


def parse_sets(specs: Sequence[str], swept: Sequence[str] = ()) -> list[tuple[str, str]]:
  """`["num_steps=200"]` -> `[("num_steps", "200")]`; a field also swept is an error."""
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


def cell_name(overrides: Sequence[tuple[str, str]]) -> str:
  """`[("loss.name", "ce"), ("model.norm", "batch")]` -> `loss.name=ce__model.norm=batch`."""
  return "__".join(_safe(f"{f}={v}") for f, v in overrides) or "default"


def cells(sweeps: Sequence[tuple[str, Sequence[str]]], seeds: int, workdir: str) -> list[Cell]:
  """The runs of the grid, in order: product of the sweeps (first varies slowest), then seeds."""
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
  path, _, variant = config_arg.partition(":")
  if not os.path.isfile(path):
    raise SweepError(f"--config={config_arg}: no such config file {path!r}")
  try:
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  # any failure of user code
    raise SweepError(f"--config={config_arg}: cannot load the config "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  for field in fields:
    node = config
    for part in field.split("."):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        raise SweepError(f"config field {field!r} does not exist in {config_arg}; "
                         "see the config file for the fields") from None


# ------------------------------------------------------------- running ---

# The running experiments.main subprocesses, so that an interrupted sweep can stop them cleanly.
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


def command(cell: Cell, config_arg: str, sets: Sequence[tuple[str, str]] = ()) -> list[str]:
  """The `experiments.main` command line of one run."""
  overrides = list(sets) + list(cell.overrides) + [("seed", str(cell.seed))]
  return ([sys.executable, "-m", "experiments.main", f"--config={config_arg}",
           f"--workdir={cell.workdir}"] + [f"--config.{f}={v}" for f, v in overrides])


def _tail(path: str, start: int, lines: int = 8) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(start)
      text = f.read().decode("utf-8", "replace")
  except OSError:
    return ""
  # tqdm redraws with carriage returns: keep the last state of each line
  rows = [r.split("\r")[-1].rstrip() for r in text.split("\n")]
  return "\n".join([r for r in rows if r.strip()][-lines:])


def _stop(proc: subprocess.Popen, timeout: float = 120.0) -> None:
  """SIGTERM (experiments.main saves a checkpoint and exits), then SIGKILL after `timeout` s."""
  if proc.poll() is None:
    proc.terminate()
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def run_cell(cell: Cell, config_arg: str, sets: Sequence[tuple[str, str]] = ()) -> tuple[bool, str]:
  """Runs one cell as an `experiments.main` subprocess; `(ok, stderr tail)`.

  stdout/stderr are appended to `stdout.log`/`stderr.log` in the run's workdir.
  """
  os.makedirs(cell.workdir, exist_ok=True)
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  err_path = os.path.join(cell.workdir, "stderr.log")
  start = os.path.getsize(err_path) if os.path.exists(err_path) else 0
  with open(os.path.join(cell.workdir, "stdout.log"), "ab") as out, open(err_path, "ab") as err:
    with _children_lock:
      if _stopping.is_set():
        return False, "not started: the sweep was interrupted"
      proc = subprocess.Popen(command(cell, config_arg, sets), stdout=out, stderr=err, env=env)
      _children.add(proc)
    try:
      rc = proc.wait()
    except BaseException:  # interrupted: let the run save its checkpoint before going on
      _stop(proc)
      raise
    finally:
      with _children_lock:
        _children.discard(proc)
  tail = _tail(err_path, start)
  if rc != 0:
    return False, f"exit status {rc}" + (f"\n{tail}" if tail else "")
  return True, tail


def is_finished(cell: Cell) -> bool:
  return os.path.exists(os.path.join(cell.workdir, "eval.json"))


Runner = Callable[[Cell, str, Sequence[tuple[str, str]]], tuple[bool, str]]


def run_sweep(grid: Sequence[Cell], config_arg: str, sets: Sequence[tuple[str, str]] = (), *,
              parallel_runs: int = 1, runner: Runner = run_cell,
              log: Callable[[str], None] = print) -> list[Outcome]:
  """Runs every unfinished cell of `grid` with `runner` (`parallel_runs` at a time)."""
  todo = [c for c in grid if not is_finished(c)]
  outcomes = {c: Outcome(c, "skipped", "eval.json exists") for c in grid if is_finished(c)}
  if outcomes:
    log(f"{len(outcomes)} of {len(grid)} run(s) already finished: skipped")

  def one(index_cell):
    index, cell = index_cell
    label = f"[{index + 1}/{len(todo)}] {cell.name} seed {cell.seed}"
    log(f"{label}: running in {cell.workdir}")
    try:
      ok, message = runner(cell, config_arg, sets)
    except OSError as e:
      ok, message = False, f"could not start: {e}"
    if ok and not is_finished(cell):
      ok, message = False, "ended without writing eval.json (stopped?); re-run to resume\n" + message
    if ok:
      log(f"{label}: done")
      return Outcome(cell, "done")
    log(f"{label}: FAILED ({cell.workdir})\n" + "\n".join("    " + l for l in message.splitlines()))
    return Outcome(cell, "failed", message)

  _stopping.clear()
  pool = concurrent.futures.ThreadPoolExecutor(parallel_runs) if parallel_runs > 1 else None
  try:
    results = pool.map(one, enumerate(todo)) if pool else map(one, enumerate(todo))
    for outcome in results:
      outcomes[outcome.cell] = outcome
  except KeyboardInterrupt:
    # SIGTERM makes experiments.main save a checkpoint and stop; a re-run resumes it.
    with _children_lock:
      _stopping.set()
      children = list(_children)
    for proc in children:
      if proc.poll() is None:
        proc.terminate()
    for proc in children:
      _stop(proc)
    raise
  finally:
    if pool:
      pool.shutdown(wait=True, cancel_futures=True)
  return [outcomes[c] for c in grid]


# ----------------------------------------------------------- reporting ---

def _scalar_metrics(results: dict) -> dict[str, float]:
  """The scalar metrics of an eval.json dict, without `per_case` and `*_missing` counts."""
  out = {}
  for key, value in results.items():
    if key == "per_case" or key.endswith("_missing") or isinstance(value, bool):
      continue
    if isinstance(value, (int, float)) or value is None:
      out[key] = value
  return out


def aggregate(grid: Sequence[Cell]) -> tuple[list[str], list[dict]]:
  """Means and stds over seeds of every scalar metric of each cell's `eval.json`.

  Returns `(metrics, rows)`: `metrics` in order of first appearance; one row
  per cell (in grid order) with `"cell"`, `"fields"` (`{field: value}`),
  `"n_seeds"` (runs with an eval.json) and `"mean"`/`"std"` (`{metric:
  float}`; a metric that is None in a run, e.g. the distance to a missed
  structure, is averaged over the runs that have it, and left out when none
  has). std is the sample standard deviation (ddof=1), 0.0 for one value.
  """
  metrics: list[str] = []
  by_cell: dict[str, dict] = {}
  for cell in grid:
    row = by_cell.setdefault(cell.name, {"cell": cell.name, "fields": dict(cell.overrides),
                                         "values": {}, "n_seeds": 0})
    path = os.path.join(cell.workdir, "eval.json")
    if not os.path.exists(path):
      continue
    try:
      with open(path) as f:
        results = json.load(f)
    except (OSError, ValueError):
      continue
    row["n_seeds"] += 1
    for key, value in _scalar_metrics(results).items():
      if key not in metrics:
        metrics.append(key)
      if value is not None and math.isfinite(value):
        row["values"].setdefault(key, []).append(float(value))
  rows = []
  for row in by_cell.values():
    values = row.pop("values")
    row["mean"] = {k: sum(v) / len(v) for k, v in values.items()}
    row["std"] = {k: (math.sqrt(sum((x - row["mean"][k]) ** 2 for x in v) / (len(v) - 1))
                      if len(v) > 1 else 0.0) for k, v in values.items()}
    rows.append(row)
  return metrics, rows


def _fields(rows: Sequence[dict]) -> list[str]:
  return list(rows[0]["fields"]) if rows else []


def write_csv(path: str, metrics: Sequence[str], rows: Sequence[dict]) -> None:
  fields = _fields(rows)
  header = fields + [f"{m} {s}" for m in metrics for s in ("mean", "std")] + ["n_seeds"]
  with open(path + ".tmp", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for row in rows:
      stats = [row[s].get(m, "") for m in metrics for s in ("mean", "std")]
      writer.writerow([row["fields"][k] for k in fields] + stats + [row["n_seeds"]])
  os.replace(path + ".tmp", path)


def write_markdown(path: str, metrics: Sequence[str], rows: Sequence[dict], *, command_line: str,
                   failed: Sequence[Outcome] = ()) -> None:
  fields = _fields(rows)
  cell = lambda row, m: (f"{row['mean'][m]:.3f} ± {row['std'][m]:.3f}" if m in row["mean"] else "–")
  lines = [
      "# Sweep results", "",
      f"Command: `{command_line}`", "",
      f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}", "",
      "Each entry is the mean ± sample std over seeds of the metric in the runs' `eval.json` "
      "(means over the test cases).", "",
      "| " + " | ".join(fields + list(metrics) + ["n_seeds"]) + " |",
      "|" + "---|" * len(fields) + "---:|" * (len(metrics) + 1),
  ]
  for row in rows:
    lines.append("| " + " | ".join([f"`{row['fields'][f]}`" for f in fields] +
                                   [cell(row, m) for m in metrics] + [str(row["n_seeds"])]) + " |")
  if failed:
    lines += ["", "Failed runs (see `stderr.log` in each):", ""]
    lines += [f"- `{o.cell.workdir}`: {o.message.splitlines()[0] if o.message else ''}" for o in failed]
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(path + ".tmp", path)


def write_plot(path: str, metrics: Sequence[str], rows: Sequence[dict]) -> None:
  """Grouped bars: one group per cell, one bar per `dice/*` metric, std error bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
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
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(workdir: str, grid: Sequence[Cell], *, command_line: str,
                  outcomes: Sequence[Outcome] = ()) -> dict[str, str]:
  """Aggregates `grid` into `results.csv`, `results.md` and `results.png` in `workdir`."""
  metrics, rows = aggregate(grid)
  paths = {k: os.path.join(workdir, f"results.{k}") for k in ("csv", "md", "png")}
  write_csv(paths["csv"], metrics, rows)
  write_markdown(paths["md"], metrics, rows, command_line=command_line,
                 failed=[o for o in outcomes if o.status == "failed"])
  write_plot(paths["png"], metrics, rows)
  return paths


# ---------------------------------------------------------------- main ---

def define_flags() -> None:
  """The command-line flags (defined by `run()`, so that importing this module defines none)."""
  flags.DEFINE_string("config", None, "Experiment config file, optionally `path.py:variant`.")
  flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,...: config field and its values (repeatable).")
  flags.DEFINE_integer("seeds", 1, "Seeds per cell (config.seed = 0 .. seeds-1).")
  flags.DEFINE_string("workdir", None, "Sweep folder: one workdir per run, plus results.*")
  flags.DEFINE_integer("parallel_runs", 1, "Runs executed at the same time.")
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE override applied to every run (repeatable).")
  flags.mark_flags_as_required(["config", "workdir"])


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  try:
    if FLAGS.parallel_runs < 1:
      raise SweepError(f"--parallel_runs={FLAGS.parallel_runs}: expected at least 1")
    sweeps = parse_sweep(FLAGS.sweep)
    sets = parse_sets(FLAGS.set, [f for f, _ in sweeps])
    grid = cells(sweeps, FLAGS.seeds, workdir)
    check_fields(FLAGS.config, [f for f, _ in sweeps] + [f for f, _ in sets])
  except SweepError as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)
  os.makedirs(workdir, exist_ok=True)
  print(f"sweep: {len(grid) // FLAGS.seeds} cell(s) x {FLAGS.seeds} seed(s) = {len(grid)} run(s) "
        f"in {workdir}", flush=True)
  log = lambda text: print(text, flush=True)
  command_line = "python -m experiments.sweep " + shlex.join(sys.argv[1:])
  signal.signal(signal.SIGTERM, _raise_interrupt)  # pre-emption: stop the runs cleanly too
  try:
    outcomes = run_sweep(grid, FLAGS.config, sets, parallel_runs=FLAGS.parallel_runs, log=log)
  except KeyboardInterrupt:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    write_results(workdir, grid, command_line=command_line)
    print(f"error: sweep interrupted; the runs saved checkpoints; re-run the same command to "
          f"continue (results so far in {workdir}/results.md)", file=sys.stderr)
    sys.exit(130)
  paths = write_results(workdir, grid, command_line=command_line, outcomes=outcomes)
  failed = [o for o in outcomes if o.status == "failed"]
  print(f"results: {paths['md']}, {paths['csv']}, {paths['png']}", flush=True)
  if failed:
    print(f"error: {len(failed)} of {len(grid)} run(s) failed: "
          + ", ".join(os.path.relpath(o.cell.workdir, workdir) for o in failed), file=sys.stderr)
    sys.exit(1)


def run():
  from experiments import cli  # pylint: disable=import-outside-toplevel
  define_flags()
  cli.run_main(main)


if __name__ == "__main__":
  run()
