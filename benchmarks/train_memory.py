"""Peak host memory of training on nnU-Net raw folders of a growing number of cases.

  python -m benchmarks.train_memory [--cases=6,60] [--shape=200,512,512] [--distinct=6]
      [--steps=8] [--patch=32,64,64] [--cached=4] [--root=/tmp/medjax_train_memory]
      [--keep] [--json=out.json]

Prints one JSON row per folder size and a summary (`benchmarks.memory.train.measure`:
each folder prepared, then trained in a fresh subprocess whose peak RSS is reported).
The folders and prepared datasets under `--root` are deleted at the end (`--keep`
keeps them). Bad flags: one `error:` line, exit 2.
"""
from __future__ import annotations

from absl import flags

from benchmarks.memory import train
from experiments import cli
from medjax.errors import InputError
from medjax.train.workdir import atomic_write_json

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "/tmp/medjax_train_memory", "folder for the raw and prepared data")
flags.DEFINE_list("cases", ["6", "60"], "folder sizes, in cases")
flags.DEFINE_list("shape", ["200", "512", "512"], "case size (D, H, W) in voxels")
flags.DEFINE_integer("distinct", 6, "different volumes written (the other cases hard-link them)")
flags.DEFINE_integer("steps", 8, "training steps per folder")
flags.DEFINE_list("patch", ["32", "64", "64"], "training patch size (D, H, W)")
flags.DEFINE_integer("cached", 4, "decoded cases kept by the case cache (config.cached_cases)")
flags.DEFINE_bool("keep", False, "keep the folders and prepared datasets under --root")
flags.DEFINE_string("json", None, "also write the rows to this JSON file")


def main(argv) -> None:
  if len(argv) > 1:
    cli.exit_with_error(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    rows = train.measure(FLAGS.root, cli.parse_numbers("cases", FLAGS.cases),
                         cli.parse_numbers("shape", FLAGS.shape), distinct=FLAGS.distinct,
                         steps=FLAGS.steps, patch=cli.parse_numbers("patch", FLAGS.patch),
                         cached=FLAGS.cached, keep=FLAGS.keep)
  except InputError as e:
    cli.exit_with_error(e)
  gib = 1 << 30
  for row in rows:
    print(f"{row['cases']} cases ({row['train_cases']} in the training fold) of "
          f"{'x'.join(map(str, row['shape']))}: peak RSS {row['peak_rss_bytes'] / gib:.2f} GiB "
          f"(before training {row['rss_before_train_bytes'] / gib:.2f} GiB), train "
          f"{row['train_seconds']:.0f} s, prepare {row['prepare_seconds']:.0f} s")
  if len(rows) > 1:
    print(f"difference {rows[-1]['cases']} - {rows[0]['cases']} cases: "
          f"{(rows[-1]['peak_rss_bytes'] - rows[0]['peak_rss_bytes']) / gib:+.2f} GiB")
  if FLAGS.json:
    atomic_write_json(FLAGS.json, rows)


if __name__ == "__main__":
  cli.run(main)
