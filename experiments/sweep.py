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
sweeps two tuples. The work is done by `medjax.sweep.driver.sweep`.
"""
from __future__ import annotations

import shlex
import sys

from absl import app, flags

from experiments import cli
from medjax.errors import InputError
from medjax.sweep import driver

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Experiment config file, optionally `path.py:variant`.")
flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,...: config field and its values (repeatable).")
flags.DEFINE_integer("seeds", 1, "Seeds per cell (config.seed = 0 .. seeds-1).")
flags.DEFINE_string("workdir", None, "Sweep folder: one workdir per run, plus results.*")
flags.DEFINE_integer("parallel_runs", 1, "Runs executed at the same time.")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE override applied to every run (repeatable).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    status = driver.sweep(FLAGS.config, FLAGS.workdir, sweeps=FLAGS.sweep, sets=FLAGS.set,
                          seeds=FLAGS.seeds, parallel_runs=FLAGS.parallel_runs,
                          command_line="python -m experiments.sweep " + shlex.join(sys.argv[1:]))
  except InputError as e:
    cli.exit_with_error(e)
  sys.exit(status)


if __name__ == "__main__":
  cli.run(main)
