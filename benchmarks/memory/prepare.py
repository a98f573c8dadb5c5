"""Peak host memory and time of preprocessing one large case (`preprocessing.apply_plan`).

`measure(...)` runs, in a fresh Python subprocess (so nothing else is
resident): build one synthetic CT case `(D, H, W)` int16 (air border, body,
a liver-like ellipsoid labelled 1 with +30 HU under 20 HU noise) and its
uint8 label slab by slab, then `apply_plan.preprocess_case` with a CT plan
whose target spacing is `target_spacing`. It reports the child's peak
resident set size over its whole life (`rss.lifetime_peak`: the interpreter,
numpy / scipy, the int16 input and label, and everything preprocessing
allocates), the resident size just before the call, the preprocessing's own
peak of traced allocations (`tracemalloc`, which numpy reports to), the time,
and these over the case's float32 size (the goal: a peak below 3x, so that a
600 x 512 x 512 CT case prepares on a laptop; `benchmarks/RESULTS.md`, "Data
preparation memory").
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import time
import tracemalloc
from typing import Sequence

import numpy as np

from benchmarks.memory import fresh_process, rss
from medjax.errors import InputError


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


def child_main(spec_json: str) -> dict:
  """The measurement inside the fresh subprocess of `measure`."""
  from medjax.data.preprocessing import apply_plan  # imported before the baseline is read

  spec = json.loads(spec_json)
  shape, spacing, target_spacing = spec["shape"], spec["spacing"], spec["target_spacing"]
  image, label = synthetic_case(shape, spacing)
  plan = {"version": 1, "target_spacing": list(target_spacing), "channel_names": ["CT"],
          "normalization": [{"scheme": "ct", "clip": [-20.0, 150.0], "mean": 70.0, "std": 20.0}]}
  before = rss.current()
  tracemalloc.start()
  start = time.perf_counter()
  case = apply_plan.preprocess_case(image, label, spacing, np.eye(4), plan)
  seconds = time.perf_counter() - start
  traced_peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  peak = rss.lifetime_peak()
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
  """Runs one measurement in a fresh subprocess; returns its numbers (see the module docstring).

  Raises:
    InputError: sizes or spacings that are not three positive numbers (one line).
  """
  for flag, values in (("shape", shape), ("spacing", spacing), ("target_spacing", target_spacing)):
    if len(values) != 3 or any(v <= 0 for v in values):
      raise InputError(f"--{flag}={','.join(map(str, values))}: expected three positive numbers")
  spec = dict(shape=[int(s) for s in shape], spacing=[float(s) for s in spacing],
              target_spacing=[float(s) for s in target_spacing])
  result = fresh_process.run(__name__, spec)
  result.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
  return result
