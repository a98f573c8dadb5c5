"""3D NMS speed: medjax's jit NMS against MONAI's `non_max_suppression` and a NumPy greedy NMS.

  python -m benchmarks.bench_nms [--sizes=5000,50000] [--iou_thresholds=0.1,0.22]
      [--repeats=7] [--monai_repeats=3] [--no_monai] [--results=benchmarks/RESULTS.md]
      [--json=out.json]

Workload (`detector_like_boxes`): what a 3D detector emits before NMS -- boxes
around 40 objects in a 128 x 192 x 192 voxel volume (object sizes log-uniform
in 4..30 voxels, box centres jittered by 0.3 of the size, box sizes by +-20 %
per axis), uniform random scores (no ties), seeded. The same boxes go to all
three implementations in the same process; the benchmark exits with status 1
if their kept sets (in greedy order) differ. Times are the median and the
min..max over `repeats` calls (the jit NMS after one warm-up call, whose
compile time is reported apart); MONAI runs on PyTorch CPU tensors (its own
loop), NumPy is `medjax.detection.nms.nms_numpy`. The machine's load average is
read before and after. `--results` replaces (or appends) this benchmark's
section of a RESULTS.md. MONAI (`pip install -e .[bench]`) is optional with
`--no_monai`.
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from typing import Callable

import numpy as np
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["5000", "50000"], "numbers of boxes")
flags.DEFINE_list("iou_thresholds", ["0.1", "0.22"], "NMS IoU thresholds")
flags.DEFINE_integer("repeats", 7, "timed calls of the jit and NumPy NMS")
flags.DEFINE_integer("monai_repeats", 3, "timed calls of MONAI's NMS (it is slow)")
flags.DEFINE_bool("no_monai", False, "skip MONAI")
flags.DEFINE_integer("seed", 0, "seed of the boxes and scores")
flags.DEFINE_string("results", None, "RESULTS.md whose bench_nms section is replaced or appended")
flags.DEFINE_string("json", None, "write the measurements to this JSON file")

BEGIN, END = "<!-- bench_nms:begin -->", "<!-- bench_nms:end -->"


def detector_like_boxes(num: int, seed: int, shape=(128, 192, 192), objects: int = 40):
  """`(boxes (num, 6) float32, scores (num,) float32)`: boxes clustered around objects."""
  rng = np.random.default_rng(seed)
  centers = rng.uniform(0, 1, (objects, 3)) * np.asarray(shape)
  sizes = np.exp(rng.uniform(np.log(4), np.log(30), (objects, 1)))
  which = rng.integers(0, objects, num)
  center = centers[which] + rng.normal(0, 1, (num, 3)) * sizes[which] * 0.3
  size = sizes[which] * np.exp(rng.normal(0, 0.2, (num, 3)))
  boxes = np.concatenate([center - size / 2, center + size / 2], 1).astype(np.float32)
  return boxes, rng.uniform(0, 1, num).astype(np.float32)


def _time(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return times, out


def _summary(times: list[float]) -> dict:
  return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
          "max_s": float(np.max(times)), "runs": len(times)}


def machine() -> dict:
  cpu = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo") as f:
      names = re.findall(r"model name\s*:\s*(.*)", f.read())
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1_5_15": list(os.getloadavg())}


def bench(sizes, thresholds, *, repeats: int, monai_repeats: int, use_monai: bool,
          seed: int) -> dict:
  import jax

  from medjax.detection.nms import nms, nms_numpy
  if use_monai:
    import torch
    from monai.data.box_utils import non_max_suppression
  rows = []
  before = machine()
  for num in sizes:
    boxes, scores = detector_like_boxes(num, seed)
    jboxes, jscores = jax.device_put(boxes), jax.device_put(scores)
    for threshold in thresholds:
      run_jit = lambda: jax.block_until_ready(nms(jboxes, jscores, iou_threshold=threshold))
      start = time.perf_counter()
      run_jit()
      compile_s = time.perf_counter() - start
      jit_times, (indices, count) = _time(run_jit, repeats)
      kept_jit = np.asarray(indices)[:int(count)]
      np_times, kept_np = _time(lambda: nms_numpy(boxes, scores, iou_threshold=threshold),
                                repeats)
      row = {"boxes": num, "iou_threshold": threshold, "kept": int(len(kept_np)),
             "jit": _summary(jit_times), "jit_first_call_s": compile_s,
             "numpy": _summary(np_times), "same_kept_numpy": bool(np.array_equal(kept_jit,
                                                                                  kept_np))}
      if use_monai:
        tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
        monai_times, kept_monai = _time(lambda: non_max_suppression(tb, ts, threshold),
                                        monai_repeats)
        row["monai"] = _summary(monai_times)
        row["same_kept_monai"] = bool(np.array_equal(kept_jit, np.asarray(kept_monai)))
      rows.append(row)
      print(json.dumps(row), flush=True)
  return {"machine_before": before, "machine_after": machine(), "rows": rows,
          "jax": jax.__version__, "device": str(jax.devices()[0]),
          "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _ms(summary: dict) -> str:
  return (f"{summary['median_s'] * 1e3:,.1f} ({summary['min_s'] * 1e3:,.1f}.."
          f"{summary['max_s'] * 1e3:,.1f})")


def markdown(result: dict, command: str) -> str:
  m0, m1 = result["machine_before"], result["machine_after"]
  lines = [
      BEGIN,
      "# 3D NMS (`python -m benchmarks.bench_nms`, issue 19)", "",
      f"`{command}` -- {result['date_utc']}, {m0['cpu']}, {m0['cores']} cores, "
      f"jax {result['jax']} on {result['device']}; load average (1/5/15 min) "
      f"{'/'.join(f'{x:.1f}' for x in m0['load_average_1_5_15'])} before, "
      f"{'/'.join(f'{x:.1f}' for x in m1['load_average_1_5_15'])} after (a shared machine).", "",
      "Boxes clustered around 40 objects in a 128x192x192 volume, uniform scores "
      "(`detector_like_boxes`). Milliseconds, median (min..max); the kept sets of all "
      "implementations are equal (checked in the run, exit 1 otherwise).", "",
      "| boxes | IoU thr | kept | jit NMS | first call (compile) | NumPy greedy | MONAI "
      "`non_max_suppression` | jit vs MONAI | jit vs NumPy |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for row in result["rows"]:
    monai = row.get("monai")
    jit = row["jit"]["median_s"]
    lines.append(
        f"| {row['boxes']:,} | {row['iou_threshold']} | {row['kept']} | {_ms(row['jit'])} | "
        f"{row['jit_first_call_s'] * 1e3:,.0f} | {_ms(row['numpy'])} | "
        f"{_ms(monai) if monai else '--'} | "
        f"{(monai['median_s'] / jit if monai else float('nan')):,.0f}x | "
        f"{row['numpy']['median_s'] / jit:,.1f}x |")
  lines.append(END)
  return "\n".join(lines) + "\n"


def write_section(path: str, section: str) -> None:
  text = open(path).read() if os.path.exists(path) else ""
  if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    text = head + section.rstrip("\n") + rest.split(END, 1)[1]
  else:
    text = text.rstrip("\n") + "\n\n" + section
  with open(path, "w") as f:
    f.write(text)


def main(argv) -> None:
  del argv
  try:
    sizes = [int(s) for s in FLAGS.sizes]
    thresholds = [float(t) for t in FLAGS.iou_thresholds]
  except ValueError as e:
    cli.exit_with_error(f"--sizes / --iou_thresholds: expected numbers ({e})")
  if any(s <= 0 for s in sizes) or any(not 0 <= t <= 1 for t in thresholds):
    cli.exit_with_error("--sizes: expected positive counts; --iou_thresholds: values in [0, 1]")
  if not FLAGS.no_monai:
    try:
      import monai  # noqa: F401
    except ImportError:
      cli.exit_with_error("MONAI is not installed: pip install -e '.[bench]' (or --no_monai)")
  result = bench(sizes, thresholds, repeats=FLAGS.repeats, monai_repeats=FLAGS.monai_repeats,
                 use_monai=not FLAGS.no_monai, seed=FLAGS.seed)
  command = " ".join(["python -m benchmarks.bench_nms"] + sys.argv[1:])
  section = markdown(result, command)
  print(section)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=1)
  if FLAGS.results:
    write_section(FLAGS.results, section)
  differ = [r for r in result["rows"]
            if not r["same_kept_numpy"] or not r.get("same_kept_monai", True)]
  if differ:
    print(f"error: kept sets differ for {[(r['boxes'], r['iou_threshold']) for r in differ]}",
          file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
