r"""Train and evaluate one experiment.

  python -m experiments.main --config=experiments/configs/unet3d_synthetic.py \
      --workdir=runs/unet3d [--config.loss.name=ce ...]

Multi-host: pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I (or set MEDJAX_COORDINATOR_ADDRESS / MEDJAX_NUM_PROCESSES /
MEDJAX_PROCESS_ID). Re-running the same command resumes the run.

Exit status: 0 when the run is trained and evaluated; 2 for bad input (one
`error:` line); 143 (128 + SIGTERM) when SIGTERM stopped it after saving a
checkpoint (the warning says which step), so `main && predict` stops there.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli
from medjax import parallel
from medjax.errors import InputError
from medjax.train import loop, run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    parallel.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    config.unlock()
    config.data_dir = os.path.expanduser(config.data_dir)
    config.lock()
    run.train_and_evaluate(config, FLAGS.workdir)
  except (InputError, loop.NonFiniteLossError) as e:
    cli.exit_with_error(e)
  except loop.TrainingStopped as e:  # saved, and warned with the step; not finished
    sys.exit(e.exit_status)


if __name__ == "__main__":
  cli.run(main)
