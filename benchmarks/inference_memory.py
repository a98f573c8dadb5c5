"""Peak host memory and speed of sliding-window inference on one large volume.

  python -m benchmarks.inference_memory [--shape=512,512,512] [--roi=128,128,128]
      [--predictor=linear|conv|fixed|default] [--classes=3] [--overlap=0.5]
      [--mode=gaussian|constant] [--batch_size=4] [--volumes=1]
      [--set output=labels] [--set dtype=float16] [--json=out.json]

Prints (and with --json writes) the JSON of `benchmarks.memory.inference.bench_inference`:
the peak resident memory the call adds beyond its input, per voxel, and the time per
volume. Bad flags: one `error:` line, exit 2.
"""
from __future__ import annotations

import json

from absl import flags

from benchmarks.memory import inference
from experiments import cli
from medjax.errors import InputError
from medjax.train.workdir import atomic_write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("shape", ["512", "512", "512"], "volume size, e.g. 512,512,512")
flags.DEFINE_list("roi", None, "window; default 128,128,128, or the default config's patch "
                  "size with --predictor=default")
flags.DEFINE_integer("classes", 3, "output classes K")
flags.DEFINE_enum("predictor", "linear", list(inference.PREDICTORS), "what predicts the windows")
flags.DEFINE_float("overlap", 0.5, "fraction of a window shared with its neighbour")
flags.DEFINE_enum("mode", "gaussian", ["gaussian", "constant"], "blending weights")
flags.DEFINE_integer("batch_size", 4, "windows per predictor call")
flags.DEFINE_integer("volumes", 1, "timed runs over the volume")
flags.DEFINE_multi_string("set", [], "KEY=VALUE: a keyword of sliding_window, e.g. "
                          "output=labels, dtype=float16 (repeatable)")
flags.DEFINE_string("json", None, "also write the result to this JSON file")


def main(argv) -> None:
  if len(argv) > 1:
    cli.exit_with_error(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    kwargs = {}
    for item in FLAGS.set:
      key, sep, value = item.partition("=")
      if not sep or not key:
        raise InputError(f"--set={item!r}: expected KEY=VALUE")
      kwargs[key] = value
    roi = (cli.parse_numbers("roi", FLAGS.roi) if FLAGS.roi
           else None if FLAGS.predictor == "default" else (128, 128, 128))
    result = inference.bench_inference(
        cli.parse_numbers("shape", FLAGS.shape), roi, classes=FLAGS.classes,
        predictor=FLAGS.predictor, overlap=FLAGS.overlap, mode=FLAGS.mode, batch_size=FLAGS.batch_size,
        volumes=FLAGS.volumes, window_kwargs=kwargs)
  except InputError as e:
    cli.exit_with_error(e)
  print(json.dumps(result, indent=1))
  if FLAGS.json:
    atomic_write_json(FLAGS.json, result)


if __name__ == "__main__":
  cli.run(main)
