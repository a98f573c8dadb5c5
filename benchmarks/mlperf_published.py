"""Published MLPerf Training results for 3D U-Net, from the submitted logs: minutes and s/epoch.

  python -m benchmarks.mlperf_published --results DIR:RULESET [--results ...] [--systems REGEX]

`DIR` is a local checkout of an MLCommons results repository
(github.com/mlcommons/training_results_v1.0, _v3.0, _v4.0, ...; nothing is
downloaded), `RULESET` its rules version (1.0.0, 3.0.0, 4.0.0). For every
`<org>/results/<system>/unet3d/` folder (matching `--systems`) it prints the
official score (`mlperf_logging.result_summarizer`: 40 runs, the 4 fastest and 4
slowest dropped, minutes from `run_start` to `run_stop`), the global batch size,
the median epochs to converge and the median over the converged runs of
(time / epochs), evaluations included. Epochs are of 168 samples: logs that count
`epoch_num` in samples (NVIDIA's since round 3.1) are divided by 168; Google's
round-1.0 TPU logs declare 192 samples per epoch (their padded epochs) and are
converted to 168. These are the `PUBLISHED` figures of `benchmarks.mlperf_predict`.
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("results", [], "DIR:RULESET of a results repository checkout")
flags.DEFINE_string("systems", "", "regex on <org>/<system>")


def runs(folder: str, ruleset: str) -> tuple[list[tuple[float, float]], int]:
  """`(seconds, epochs of 168 samples)` of every converged run in a `unet3d/` folder, and
  the global batch size."""
  from mlperf_logging.compliance_checker import mlp_parser
  out, batch = [], 0
  for path in sorted(glob.glob(os.path.join(folder, "result_*.txt"))):
    lines, _ = mlp_parser.parse_file(path, ruleset=ruleset)
    start = stop = epoch = status = None
    samples = 168
    for line in lines:
      if line.key == "run_start":
        start = line.timestamp
      elif line.key == "run_stop":
        stop, status = line.timestamp, line.value["metadata"].get("status")
      elif line.key == "eval_accuracy":
        epoch = line.value["metadata"]["epoch_num"]
      elif line.key == "samples_per_epoch":
        samples = line.value["value"]
      elif line.key == "global_batch_size":
        batch = int(line.value["value"])
    if status != "success" or epoch is None:
      continue
    epochs = epoch / 168 if epoch > 20000 else epoch * samples / 168  # samples, or epochs
    out.append(((stop - start) / 1e3, epochs))
  return out, batch


def score(folder: str, system: str, ruleset: str) -> float:
  from mlperf_logging.result_summarizer import result_summarizer
  with contextlib.redirect_stdout(io.StringIO()):
    value = result_summarizer._compute_strong_score_standalone(  # pylint: disable=protected-access
        "unet3d", system, False, folder, "training", ruleset)
  return float(value[0] if isinstance(value, tuple) else value)


def main(argv) -> None:
  del argv
  pattern = re.compile(FLAGS.systems) if FLAGS.systems else None
  print("| round | org/system | global batch | score (min) | median epochs | s / epoch |")
  print("|---|---|---|---|---|---|")
  for spec in FLAGS.results:
    root, _, ruleset = spec.rpartition(":")
    for folder in sorted(glob.glob(os.path.join(root, "*", "results", "*", "unet3d"))):
      org, _, system, _ = folder.split(os.sep)[-4:]
      if pattern and not pattern.search(f"{org}/{system}"):
        continue
      converged, batch = runs(folder, ruleset)
      if not converged:
        continue
      seconds, epochs = np.array(converged).T
      print(f"| {ruleset} | {org}/{system} | {batch} | {score(folder, system, ruleset):.2f} | "
            f"{np.median(epochs):.0f} | {np.median(seconds / epochs):.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
