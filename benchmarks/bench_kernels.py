"""Kernel microbenchmarks: conv3d, soft-Dice statistics, 2x up-convolution.

  python -m benchmarks.bench_kernels [--ops conv3d,soft_dice,upconv] [--dtype float32]
      [--json out.json] [--shapes small|all] [--reps 10] [--filter NAME] [--torch]

Prints the device's measured peaks and one table row per shape, implementation
and direction (median with quartiles and range, TFLOP/s, GB/s, % of peak, speedup
over the XLA baseline of the same run); the measurements are
`benchmarks.kernel_speed.bench_kernels`. Bad flags: one `error:` line, exit 2.
"""
from __future__ import annotations

from absl import flags

from benchmarks import kernel_speed
from experiments import cli
from medjax.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_list("ops", list(kernel_speed.OPS),
                  "ops to benchmark, in this order: conv3d, soft_dice, upconv")
flags.DEFINE_enum("dtype", "float32", list(kernel_speed.DTYPES), "input dtype")
flags.DEFINE_string("json", None, "write the rows to this JSON file (rewritten after each row)")
flags.DEFINE_enum("shapes", "small", ["small", "all"], "shape set")
flags.DEFINE_integer("reps", 10, "timed runs per measurement (after one warm-up)")
flags.DEFINE_string("filter", None, "only shapes whose name contains this")
flags.DEFINE_bool("torch", False, "conv3d: also time the layer in PyTorch (cuDNN on a GPU, "
                  "oneDNN on a CPU; benchmarks.torch_conv3d)")


def main(argv) -> None:
  if len(argv) > 1:
    cli.exit_with_error(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    kernel_speed.bench_kernels(FLAGS.ops, dtype=FLAGS.dtype, shapes=FLAGS.shapes, reps=FLAGS.reps,
                               name_filter=FLAGS.filter, torch=FLAGS.torch, json_path=FLAGS.json)
  except InputError as e:
    cli.exit_with_error(e)


if __name__ == "__main__":
  cli.run(main)
