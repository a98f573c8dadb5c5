"""Training-speed benchmark of a config (`benchmarks.train_speed`).

  python -m benchmarks.bench_train --config=experiments/configs/unet3d_synthetic.py[:smoke]
      [--set FIELD=VALUE ...] [--kernels auto|xla|pallas] [--dtype float32|bfloat16]
      [--remat] [--steps 5] [--json out.json] [--torch]

Prints and (with --json) writes: compile time cold and with a warm cache, the
median step time with its spread, steps/s and voxels/s, the compiled step's
memory, peak host RSS, device memory_stats (GPU/TPU), the input pipeline's
batches/s alone, sliding-window inference volumes/min, and with --torch the
same U-Net step in PyTorch in the same process with the ratio.

The baseline 3D U-Net of benchmarks/PERF_BASELINE.md (features 16-32-64-128, 3x3x3
everywhere, batch 2 of 64^3, 2 classes, soft Dice, Adam):
  python -m benchmarks.bench_train --config=experiments/configs/unet3d_synthetic.py \
      --set model.features=16,32,64,128 --set model.kernel_sizes=None \
      --set model.pool_sizes=None --set patch_size=64,64,64 --set global_batch_size=2 \
      --set num_classes=2 --set "class_names=('background','organ')" \
      --set label_map=0,1,1 --set loss.name=dice --set loss.batch=False \
      --set loss.include_background=True --torch
"""
from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from benchmarks import train_speed
from experiments import cli
from medjax.errors import InputError
from medjax.train.workdir import atomic_write_json

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (`path.py[:variant]`).",
                                lock_config=False)
flags.DEFINE_multi_string("set", [], "FIELD=VALUE config override (repeatable).")
flags.DEFINE_enum("kernels", None, ["auto", "xla", "pallas"], "config.kernels")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "config.dtype")
flags.DEFINE_bool("remat", None, "config.remat")
flags.DEFINE_integer("steps", 5, "timed training steps (after one warm-up step)")
flags.DEFINE_integer("input_batches", 20, "batches timed from the input pipeline")
flags.DEFINE_integer("inference_volumes", 2, "test volumes timed (after one warm-up volume)")
flags.DEFINE_string("json", None, "write the results to this JSON file")
flags.DEFINE_bool("torch", False, "also time the same U-Net in PyTorch (needs torch)")


def main(argv) -> None:
  del argv
  if FLAGS.config is None:
    cli.exit_with_error("--config: expected an experiment config file")
  config = FLAGS.config
  try:
    train_speed.apply_sets(config, FLAGS.set)
    for field in ("kernels", "dtype", "remat"):
      if getattr(FLAGS, field) is not None:
        config[field] = getattr(FLAGS, field)
    result = train_speed.bench_train(
        config, steps=FLAGS.steps, input_batches=FLAGS.input_batches,
        inference_volumes=FLAGS.inference_volumes, torch=FLAGS.torch,
        command=" ".join(["python -m benchmarks.bench_train"] + sys.argv[1:]))
  except InputError as e:
    cli.exit_with_error(e)
  text = json.dumps(result, indent=1, default=str)
  print(text, flush=True)
  if FLAGS.json:
    atomic_write_json(FLAGS.json, json.loads(text))


if __name__ == "__main__":
  cli.run(main)
