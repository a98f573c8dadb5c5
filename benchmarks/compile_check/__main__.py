"""Compile every Pallas kernel for an H100 on this (CPU-only) machine (`benchmarks.compile_check`).

  python -m benchmarks.compile_check [--target h100] [--only REGEX]
      [--dtypes float32,bfloat16] [--full] [--json out.json]
  python -m benchmarks.compile_check --install_tools     # once: the pinned [gpu-check] tools

One line per kernel instance (case, fwd/bwd, grid, warps, stages, registers,
spill bytes, shared memory, CTAs per SM, cp.async count, MMA kind, compile
seconds); with --full also each case's whole forward + backward compiled by XLA
(Pallas and kernels="xla"): its kernels and HBM bytes moved against the fused
floor. Exit status 1 if any kernel fails to compile, exceeds the shared-memory
limit or spills (or a whole program fails), 2 on bad input or missing tools.
"""
from __future__ import annotations

import sys

from absl import flags

from benchmarks import compile_check
from experiments import cli
from medjax.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string("target", "h100", f"GPU to compile for: {', '.join(compile_check.TARGETS)}; "
                    "or tpu-v5e / tpu-v6e")
flags.DEFINE_string("only", "", "regex on case tags, e.g. 'conv3d/vnet_down3' or 'soft_dice'")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "input dtypes to check")
flags.DEFINE_string("json", None, "write every row to this JSON file")
flags.DEFINE_bool("full", False, "also compile each whole case with XLA: kernels, bytes moved")
flags.DEFINE_bool("install_tools", False, "install the pinned [gpu-check] tools and exit")


def main(argv) -> None:
  del argv
  try:
    if FLAGS.target.startswith("tpu"):  # tpu-v5e / tpu-v6e: benchmarks.compile_check.tpu
      from benchmarks.compile_check import tpu as tpu
      if FLAGS.install_tools:
        print(f"installed into {tpu.install_tools()}")
        return
      sys.exit(tpu.run(FLAGS.target, FLAGS.only, tuple(FLAGS.dtypes), FLAGS.json))
    if FLAGS.install_tools:
      print(f"installed into {compile_check.install_tools()}")
      return
    status = compile_check.run(FLAGS.target, FLAGS.only, tuple(FLAGS.dtypes), FLAGS.json,
                               full=FLAGS.full)
  except InputError as e:
    cli.exit_with_error(e)
  sys.exit(status)


if __name__ == "__main__":
  cli.run(main)
