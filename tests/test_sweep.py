"""medjax.sweep and experiments.sweep: the grid, aggregation over seeds, skipping finished runs,
one real run."""
import csv
import json
import os
import subprocess
import sys

import pytest

from medjax.sweep import aggregate, report
from medjax.sweep import grid as grid_lib
from medjax.sweep import runner as runner_lib
from medjax.train.workdir import Workdir

from helpers import launcher_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "unet3d_synthetic.py")


def _sweep_cli(*flags, timeout=240):  # 4 devices: the smoke config's global batch of 4
  return subprocess.run([sys.executable, "-m", "experiments.sweep", *flags], cwd=REPO,
                        env=launcher_env(4),
                        capture_output=True, text=True, timeout=timeout)


def test_parse_sweep_and_cells_2x2_grid_2_seeds(tmp_path):
  sweeps = grid_lib.parse_sweep(["loss.name=ce,dice", "config.model.norm=none,batch"])
  assert sweeps == [("loss.name", ["ce", "dice"]), ("model.norm", ["none", "batch"])]
  grid = grid_lib.cells(sweeps, 2, str(tmp_path))
  assert len(grid) == 8
  assert [(c.name, c.seed) for c in grid[:4]] == [
      ("loss.name=ce__model.norm=none", 0), ("loss.name=ce__model.norm=none", 1),
      ("loss.name=ce__model.norm=batch", 0), ("loss.name=ce__model.norm=batch", 1)]
  assert grid[-1].name == "loss.name=dice__model.norm=batch" and grid[-1].seed == 1
  assert grid[-1].overrides == (("loss.name", "dice"), ("model.norm", "batch"))
  assert grid[-1].workdir == os.path.join(str(tmp_path), "loss.name=dice__model.norm=batch", "seed_1")
  assert len({c.workdir for c in grid}) == 8
  cmd = runner_lib.command(grid[-1], "cfg.py:smoke", grid_lib.parse_sets(["num_steps=2"], ["loss.name"]))
  assert cmd[1:] == ["-m", "experiments.main", "--config=cfg.py:smoke", f"--workdir={grid[-1].workdir}",
                     "--config.num_steps=2", "--config.loss.name=dice", "--config.model.norm=batch",
                     "--config.seed=1"]


def test_values_split_outside_brackets():
  assert grid_lib.parse_sweep(["patch_size=(8,16,16),(16,32,32)"]) == [
      ("patch_size", ["(8,16,16)", "(16,32,32)"])]
  assert grid_lib.cell_name([("patch_size", "(8,16,16)")]) == "patch_size=_8_16_16_"


@pytest.mark.parametrize("specs", [["loss.name"], ["loss.name="], ["loss.name=ce,,dice"],
                                   ["loss.name=ce", "loss.name=dice"], ["seed=1,2"]])
def test_parse_sweep_rejects(specs):
  with pytest.raises(grid_lib.SweepError):
    grid_lib.parse_sweep(specs)


def test_cells_rejects_no_seeds_and_set_of_a_swept_field(tmp_path):
  with pytest.raises(grid_lib.SweepError, match="--seeds=0"):
    grid_lib.cells([("loss.name", ["ce"])], 0, str(tmp_path))
  with pytest.raises(grid_lib.SweepError, match="--sweep"):
    grid_lib.parse_sets(["loss.name=ce"], ["loss.name"])


@pytest.mark.e2e
@pytest.mark.parametrize("flags,expected", [
    (["--sweep=loss.name"], "expected FIELD=VALUE"),
    (["--sweep=loss.name="], "non-empty"),
    (["--sweep=loss.name=ce", "--seeds=0"], "--seeds=0"),
    (["--sweep=loss.nam=ce"], "'loss.nam' does not exist"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, flags, expected):
  result = _sweep_cli(f"--config={CONFIG}:smoke", f"--workdir={tmp_path / 's'}", *flags, timeout=60)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
  assert not os.path.exists(tmp_path / "s")


def _write_eval(workdir, **metrics):
  Workdir(workdir).create().write_eval({**metrics, "per_case": [{"case": "a", **metrics}]})


def test_aggregate_mean_and_sample_std_over_seeds(tmp_path):
  grid = grid_lib.cells([("loss.name", ["ce", "dice"])], 3, str(tmp_path))
  for cell, organ, tumour in zip(grid, [0.5, 0.6, 0.7, 0.2, 0.4, 0.9], [0.1, 0.3, 0.2, 0.0, 0.0, 0.0]):
    _write_eval(cell.workdir, **{"dice/organ": organ, "dice/tumour": tumour,
                                 "hd95/tumour": None if tumour == 0.0 else 10 * tumour,
                                 "hd95/tumour_missing": 3})
  metrics, rows = aggregate.aggregate(grid)
  assert metrics == ["dice/organ", "dice/tumour", "hd95/tumour"]  # no per_case, no *_missing
  ce, dice = rows
  assert ce["fields"] == {"loss.name": "ce"} and ce["n_seeds"] == 3
  assert ce["mean"]["dice/organ"] == pytest.approx(0.6, abs=1e-12)
  assert ce["std"]["dice/organ"] == pytest.approx(0.1, abs=1e-12)  # ddof=1
  assert ce["mean"]["dice/tumour"] == pytest.approx(0.2, abs=1e-12)
  assert ce["std"]["dice/tumour"] == pytest.approx(0.1, abs=1e-12)
  assert ce["mean"]["hd95/tumour"] == pytest.approx(2.0, abs=1e-12)
  assert dice["mean"]["dice/organ"] == pytest.approx(0.5, abs=1e-12)
  assert dice["std"]["dice/organ"] == pytest.approx(0.360555127546, abs=1e-9)  # sqrt(0.13)
  assert "hd95/tumour" not in dice["mean"]  # None in every seed: left out, not 0

  paths = report.write_results(str(tmp_path), grid, command_line="python -m experiments.sweep X")
  with open(paths["csv"]) as f:
    table = list(csv.reader(f))
  assert table[0] == ["loss.name", "dice/organ mean", "dice/organ std", "dice/tumour mean",
                      "dice/tumour std", "hd95/tumour mean", "hd95/tumour std", "n_seeds"]
  assert len(table) == 3 and table[1][0] == "ce" and table[2][-1] == "3"
  assert float(table[1][1]) == pytest.approx(0.6) and float(table[1][2]) == pytest.approx(0.1)
  assert table[2][5] == ""  # no hd95 for "dice"
  md = open(paths["md"]).read()
  assert "python -m experiments.sweep X" in md
  assert "| `ce` | 0.600 ± 0.100 | 0.200 ± 0.100 | 2.000 ± 1.000 | 3 |" in md
  assert "| `dice` | 0.500 ± 0.361 | 0.000 ± 0.000 | – | 3 |" in md
  assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_finished_runs_are_skipped_and_failures_do_not_stop_the_sweep(tmp_path):
  grid = grid_lib.cells([("loss.name", ["ce", "dice"]), ("model.norm", ["none", "batch"])], 2,
                     str(tmp_path))
  calls = []

  def runner(cell, config_arg, sets):
    calls.append((cell.name, cell.seed, config_arg, tuple(sets)))
    if cell.name == "loss.name=dice__model.norm=none" and cell.seed == 1:
      return False, "exit status 2\nerror: boom"
    _write_eval(cell.workdir, **{"dice/organ": 0.5 + 0.1 * cell.seed})
    return True, ""

  log = []
  outcomes = runner_lib.run_sweep(grid, "cfg.py", [("num_steps", "2")], runner=runner, log=log.append)
  assert len(calls) == 8 and calls[0] == ("loss.name=ce__model.norm=none", 0, "cfg.py", (("num_steps", "2"),))
  assert [o.status for o in outcomes].count("done") == 7
  failed = [o for o in outcomes if o.status == "failed"]
  assert len(failed) == 1 and failed[0].cell.seed == 1 and "error: boom" in failed[0].message
  assert any("FAILED" in line and "error: boom" in line for line in log)

  calls.clear()  # re-run: only the failed run is tried again
  outcomes = runner_lib.run_sweep(grid, "cfg.py", runner=runner, log=log.append)
  assert len(calls) == 1 and [o.status for o in outcomes].count("skipped") == 7

  def ok_runner(cell, config_arg, sets):
    calls.append(cell)
    _write_eval(cell.workdir, **{"dice/organ": 1.0})
    return True, ""

  calls.clear()
  runner_lib.run_sweep(grid, "cfg.py", runner=ok_runner, log=log.append)
  assert len(calls) == 1
  calls.clear()
  outcomes = runner_lib.run_sweep(grid, "cfg.py", runner=ok_runner, log=log.append, parallel_runs=2)
  assert calls == [] and all(o.status == "skipped" for o in outcomes)


def test_a_run_that_ends_without_eval_json_is_a_failure(tmp_path):
  grid = grid_lib.cells([("loss.name", ["ce"])], 1, str(tmp_path))
  outcomes = runner_lib.run_sweep(grid, "cfg.py", runner=lambda c, a, s: (True, ""), log=lambda _: None)
  assert outcomes[0].status == "failed" and "eval.json" in outcomes[0].message


@pytest.mark.e2e
def test_end_to_end_smoke_sweep(tmp_path, data_dir):
  """One real run (loss.name=dice) plus one finished run (gdl: a hand-made eval.json, skipped).

  dice/gdl rather than ce: the config's loss options (batch Dice) are options of the Dice losses.
  """
  workdir = tmp_path / "sweep"
  _write_eval(str(workdir / "loss.name=gdl" / "seed_0"),
              **{"dice/organ": 0.25, "dice/tumour": 0.125, "hd95/organ": 7.0})
  result = _sweep_cli(f"--config={CONFIG}:smoke", "--sweep=loss.name=dice,gdl", "--seeds=1",
                      "--set=num_steps=2", f"--set=data_dir={data_dir}",
                      "--set=eval.report_cases=0", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 of 2 run(s) already finished" in result.stdout
  assert "[1/1] loss.name=dice seed 0: done" in result.stdout
  assert "\r" not in result.stderr and "run/s" not in result.stderr  # no progress bar off a terminal
  run = workdir / "loss.name=dice" / "seed_0"
  assert (run / "eval.json").exists() and (run / "checkpoints").is_dir()
  saved = json.loads((run / "config.json").read_text())
  assert saved["loss"]["name"] == "dice" and saved["num_steps"] == 2 and saved["seed"] == 0
  for name in ("results.md", "results.csv", "results.png"):
    assert (workdir / name).stat().st_size > 0, name
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["loss.name"] for r in rows] == ["dice", "gdl"]
  real = json.loads((run / "eval.json").read_text())
  assert float(rows[0]["dice/organ mean"]) == pytest.approx(real["dice/organ"])
  assert 0.0 <= float(rows[0]["dice/organ mean"]) <= 1.0 and rows[0]["n_seeds"] == "1"
  assert float(rows[1]["dice/tumour mean"]) == 0.125 and float(rows[1]["dice/organ std"]) == 0.0
  md = (workdir / "results.md").read_text().splitlines()
  assert sum(1 for line in md if line.startswith("| `")) == 2
  assert any("--sweep=loss.name=dice,gdl" in line for line in md)


def test_parallel_runs_run_every_cell_once(tmp_path):
  grid = grid_lib.cells([("loss.name", ["ce", "dice", "gdl"])], 2, str(tmp_path))
  calls = []

  def runner(cell, config_arg, sets):
    calls.append(cell.workdir)
    _write_eval(cell.workdir, **{"dice/organ": 0.25 * (cell.seed + 1)})
    return True, ""

  outcomes = runner_lib.run_sweep(grid, "cfg.py", runner=runner, parallel_runs=3, log=lambda _: None)
  assert sorted(calls) == sorted(c.workdir for c in grid)
  assert [o.cell for o in outcomes] == grid and all(o.status == "done" for o in outcomes)
  _, rows = aggregate.aggregate(grid)
  assert [r["mean"]["dice/organ"] for r in rows] == [0.375, 0.375, 0.375]


def test_progress_bar_replaces_the_per_run_lines_but_not_the_failures(tmp_path, capsys):
  grid = grid_lib.cells([("loss.name", ["ce", "dice"])], 1, str(tmp_path))

  def runner(cell, config_arg, sets):
    if cell.name == "loss.name=dice":
      return False, "exit status 2\nerror: boom"
    _write_eval(cell.workdir, **{"dice/organ": 0.5})
    return True, ""

  log = []
  outcomes = runner_lib.run_sweep(grid, "cfg.py", runner=runner, log=log.append, progress=True)
  assert [o.status for o in outcomes] == ["done", "failed"]
  assert log == []  # neither "running" nor "done" lines
  err = capsys.readouterr().err
  assert "2/2" in err and "run/s" in err  # the bar
  assert "[2/2] loss.name=dice seed 0: FAILED" in err and "error: boom" in err
