"""Peak host memory and time of preprocessing one large case (`medjax.data.preprocessing.apply_plan`).

`measure(...)` runs, in a fresh Python subprocess (so nothing else is
resident): build one synthetic CT case `(D, H, W)` int16 (air border, body,
a liver-like ellipsoid labelled 1 with +30 HU under 20 HU noise) and its
uint8 label slab by slab, then `preprocessing.preprocess_case` with a CT plan
whose target spacing is `target_spacing`. It reports the child's peak
resident set size over its whole life (`resource.getrusage(...).ru_maxrss`:
the interpreter, numpy / scipy, the int16 input and label, and everything
preprocessing allocates), the resident size just before the call, the
preprocessing's own peak of traced allocations (`tracemalloc`, which numpy
reports to), the time, and these over the case's float32 size (the issue's
goal: peak < 3x).

    python -m benchmarks.prepare_memory --shape 600,512,512 \\
        --spacing 0.8,0.7,0.7 --target-spacing 1.0,0.78,0.78
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from typing import Sequence

import numpy as np


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic_case(shape: Sequence[int], spacing: Sequence[float], seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
  """`(image (*shape, 1) int16 HU, label (*shape) uint8)`, written one slice at a time."""
  rng = np.random.default_rng(seed)
  d, h, w = shape
  image = np.full((d, h, w, 1), -1000, np.int16)
  label = np.zeros((d, h, w), np.uint8)
  y, x = np.meshgrid((np.arange(h) + 0.5) * spacing[1], (np.arange(w) + 0.5) * spacing[2],
                     indexing="ij")
  cy, cx, depth = h * spacing[1] / 2, w * spacing[2] / 2, d * spacing[0]
  body = ((y - cy) / (0.45 * h * spacing[1])) ** 2 + ((x - cx) / (0.45 * w * spacing[2])) ** 2 <= 1
  for z in range(d):
    zz = ((z + 0.5) * spacing[0] - depth / 2) / (0.3 * depth)
    liver = ((y - cy) / 60.0) ** 2 + ((x - cx + 40.0) / 80.0) ** 2 + zz ** 2 <= 1
    hu = np.where(liver, 70.0, 40.0) + rng.normal(0.0, 20.0, (h, w))
    image[z, ..., 0] = np.where(body, hu, -1000.0).astype(np.int16)
    label[z] = liver & body
  return image, label


def _child(shape, spacing, target_spacing) -> dict:
  from medjax.data.preprocessing import apply_plan  # imported before the baseline is read

  image, label = synthetic_case(shape, spacing)
  plan = {"version": 1, "target_spacing": list(target_spacing), "channel_names": ["CT"],
          "normalization": [{"scheme": "ct", "clip": [-20.0, 150.0], "mean": 70.0, "std": 20.0}]}
  before = _rss_bytes()
  tracemalloc.start()
  start = time.perf_counter()
  case = apply_plan.preprocess_case(image, label, spacing, np.eye(4), plan)
  seconds = time.perf_counter() - start
  traced_peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  float32_bytes = int(np.prod(shape)) * 4
  return {"shape": list(shape), "spacing": list(spacing), "target_spacing": list(target_spacing),
          "preprocessed_shape": case.record["preprocessed_shape"],
          "float32_bytes": float32_bytes, "input_bytes": int(image.nbytes + label.nbytes),
          "rss_before_bytes": before, "peak_rss_bytes": peak,
          "peak_over_float32": peak / float32_bytes,
          "traced_peak_bytes": traced_peak, "traced_peak_over_float32": traced_peak / float32_bytes,
          "seconds": seconds}


def measure(shape: Sequence[int] = (600, 512, 512), spacing: Sequence[float] = (0.8, 0.7, 0.7),
            target_spacing: Sequence[float] = (1.0, 0.78, 0.78)) -> dict:
  """Runs one measurement in a fresh subprocess; returns its numbers (see the module docstring)."""
  args = [sys.executable, "-m", "benchmarks.prepare_memory", "--child",
          "--shape", ",".join(map(str, shape)), "--spacing", ",".join(map(str, spacing)),
          "--target-spacing", ",".join(map(str, target_spacing))]
  out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  result.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
  return result


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="600,512,512")
  parser.add_argument("--spacing", default="0.8,0.7,0.7")
  parser.add_argument("--target-spacing", default="1.0,0.78,0.78")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  shape = [int(v) for v in args.shape.split(",")]
  spacing, target = _floats(args.spacing), _floats(args.target_spacing)
  if args.child:
    print(json.dumps(_child(shape, spacing, target)))
    return
  result = measure(shape, spacing, target)
  gib = 1 << 30
  print(json.dumps(result))
  print(f"{'x'.join(map(str, shape))} int16 -> {'x'.join(map(str, result['preprocessed_shape']))}: "
        f"peak RSS {result['peak_rss_bytes'] / gib:.2f} GiB = {result['peak_over_float32']:.2f}x "
        f"float32 ({result['float32_bytes'] / gib:.2f} GiB), before the call "
        f"{result['rss_before_bytes'] / gib:.2f} GiB, traced peak of the call "
        f"{result['traced_peak_over_float32']:.2f}x, {result['seconds']:.1f} s")


if __name__ == "__main__":
  main()
