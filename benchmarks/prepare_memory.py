"""Peak host memory and time of preprocessing one large synthetic CT case.

  python -m benchmarks.prepare_memory [--shape=600,512,512] [--spacing=0.8,0.7,0.7]
      [--target_spacing=1.0,0.78,0.78] [--json=out.json]

Prints the JSON of `benchmarks.memory.prepare.measure` (run in a fresh subprocess)
and one summary line: peak RSS as a multiple of the case's float32 size. Bad flags:
one `error:` line, exit 2.
"""
from __future__ import annotations

import json

from absl import flags

from benchmarks.memory import prepare
from experiments import cli
from medjax.errors import InputError
from medjax.train.workdir import atomic_write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("shape", ["600", "512", "512"], "case size (D, H, W) in voxels")
flags.DEFINE_list("spacing", ["0.8", "0.7", "0.7"], "the case's voxel spacing (mm)")
flags.DEFINE_list("target_spacing", ["1.0", "0.78", "0.78"], "the plan's target spacing (mm)")
flags.DEFINE_string("json", None, "also write the result to this JSON file")


def main(argv) -> None:
  if len(argv) > 1:
    cli.exit_with_error(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    shape = cli.parse_numbers("shape", FLAGS.shape)
    result = prepare.measure(shape, cli.parse_numbers("spacing", FLAGS.spacing, float),
                             cli.parse_numbers("target_spacing", FLAGS.target_spacing, float))
  except InputError as e:
    cli.exit_with_error(e)
  gib = 1 << 30
  print(json.dumps(result))
  print(f"{'x'.join(map(str, shape))} int16 -> {'x'.join(map(str, result['preprocessed_shape']))}: "
        f"peak RSS {result['peak_rss_bytes'] / gib:.2f} GiB = {result['peak_over_float32']:.2f}x "
        f"float32 ({result['float32_bytes'] / gib:.2f} GiB), before the call "
        f"{result['rss_before_bytes'] / gib:.2f} GiB, traced peak of the call "
        f"{result['traced_peak_over_float32']:.2f}x, {result['seconds']:.1f} s")
  if FLAGS.json:
    atomic_write_json(FLAGS.json, result)


if __name__ == "__main__":
  cli.run(main)
