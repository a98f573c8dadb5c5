"""Peak host memory of training on a folder dataset as it grows from a few cases to many (issue 9).

Training streams its cases (`medjax.data.pipeline.case_cache`: random access into the
prepared `array_record` files, a few decoded cases kept), so its memory must
not grow with the dataset. This benchmark writes nnU-Net raw folders of
`cases` CT volumes `(D, H, W)` int16 (`prepare_memory.synthetic_case`:
air, body, a liver-like ellipsoid labelled 1 at +30 HU under 20 HU noise;
`distinct` different volumes, each written once and hard-linked under the
other case names, so a 60-case folder costs the disk of `distinct` cases;
every case is still read, prepared and stored on its own), prepares each
folder in a subprocess (`datasets.load_source`, not measured), then trains
`experiments/configs/unet3d_folder.py` (a tiny U-Net, `patch`, a few steps,
`cached_cases` decoded cases) in a fresh subprocess per folder and reports
that process's peak resident set size (`ru_maxrss`: interpreter, JAX, the
compiled step and the data pipeline) and its size before training.

    python -m benchmarks.train_memory --cases 6,60 --shape 200,512,512 --root /tmp/train_memory

The folders and prepared datasets under `--root` are deleted at the end
(`--keep` keeps them).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from typing import Sequence

SPACING = (2.5, 0.8, 0.8)


def write_folder(root: str, pool: str, cases: int, shape: Sequence[int], distinct: int) -> str:
  """An nnU-Net raw folder `root` of `cases` cases (`.nii`), hard links to `distinct`
  volumes written once into `pool`."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from benchmarks import prepare_memory  # pylint: disable=g-import-not-at-top
  from medjax.data import io  # pylint: disable=g-import-not-at-top

  os.makedirs(pool, exist_ok=True)
  affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])  # voxel axes = array axes reversed
  for seed in range(distinct):
    image_path = os.path.join(pool, f"volume_{seed}.nii")
    if not os.path.exists(image_path):
      image, label = prepare_memory.synthetic_case(shape, SPACING, seed=seed)
      io.write_nifti(os.path.join(pool, f"label_{seed}.nii"), label, affine)
      io.write_nifti(image_path, image[..., 0], affine)
      del image, label
  for folder in ("imagesTr", "labelsTr"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  for n in range(cases):
    case = f"case_{n:03d}"
    for src, dst in ((f"volume_{n % distinct}.nii", f"imagesTr/{case}_0000.nii"),
                     (f"label_{n % distinct}.nii", f"labelsTr/{case}.nii")):
      if not os.path.exists(os.path.join(root, dst)):
        os.link(os.path.join(pool, src), os.path.join(root, dst))
  with open(os.path.join(root, "dataset.json"), "w") as f:
    json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
               "numTraining": cases, "file_ending": ".nii"}, f)
  return root


def _config(manual_dir: str, data_dir: str, *, steps: int, patch: Sequence[int], cached: int):
  from medjax import config_files  # pylint: disable=g-import-not-at-top
  config = config_files.load(config_files.config_path("unet3d_folder") + ":smoke")
  config.data_dir = data_dir
  config.dataset_kwargs.manual_dir = manual_dir
  config.dataset_kwargs.num_folds = 5
  config.patch_size = tuple(patch)
  config.global_batch_size = 2
  config.num_steps = steps
  config.checkpoint_every = steps
  config.cached_cases = cached
  config.compilation_cache = False
  return config


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child_prepare(manual_dir: str, data_dir: str) -> dict:
  from medjax.train import config_data  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  # the config's dataset_kwargs name the prepared folder: prepare what training will open
  builder = config_data.folder_builder(_config(manual_dir, data_dir, steps=1, patch=(), cached=1))
  return {"prepared_cases": builder.info.splits["train"].num_examples,
          "prepare_seconds": time.perf_counter() - start}


def _child_train(manual_dir: str, data_dir: str, workdir: str, steps: int,
                 patch: Sequence[int], cached: int) -> dict:
  from medjax.train import config_data, loop  # pylint: disable=g-import-not-at-top
  config = config_data.resolve_dataset(_config(manual_dir, data_dir, steps=steps, patch=patch,
                                            cached=cached))
  train_cases = len(config_data.load_split(config, "train"))
  before = _rss_bytes()
  start = time.perf_counter()
  loop.train(config, loop.prepare_workdir(config, workdir))
  return {"train_cases": train_cases, "rss_before_train_bytes": before,
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "train_seconds": time.perf_counter() - start}


def _run_child(*args: str) -> dict:
  out = subprocess.run([sys.executable, "-m", "benchmarks.train_memory", "--child", *args],
                       check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def measure(root: str, cases: Sequence[int] = (6, 60), shape: Sequence[int] = (200, 512, 512), *,
            distinct: int = 6, steps: int = 8, patch: Sequence[int] = (32, 64, 64),
            cached: int = 4, keep: bool = False) -> list[dict]:
  """One row per folder size (see the module docstring)."""
  rows = []
  try:
    for count in cases:
      folder = write_folder(os.path.join(root, f"raw_{count}"), os.path.join(root, "pool"),
                            count, shape, distinct)
      data_dir = os.path.join(root, "data")
      row = {"cases": count, "distinct_volumes": min(distinct, count), "shape": list(shape),
             "steps": steps, "patch": list(patch), "cached_cases": cached}
      row.update(_run_child("prepare", folder, data_dir))
      row.update(_run_child("train", folder, data_dir, os.path.join(root, f"run_{count}"),
                            str(steps), ",".join(map(str, patch)), str(cached)))
      rows.append(row)
      print(json.dumps(row), flush=True)
  finally:
    if not keep:
      shutil.rmtree(root, ignore_errors=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
  machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
  for row in rows:
    row.update(date=stamp, machine=machine)
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == "--child":
    kind, rest = argv[1], argv[2:]
    if kind == "prepare":
      print(json.dumps(_child_prepare(*rest)))
    else:
      manual_dir, data_dir, workdir, steps, patch, cached = rest
      print(json.dumps(_child_train(manual_dir, data_dir, workdir, int(steps),
                                    [int(p) for p in patch.split(",")], int(cached))))
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="/tmp/medjax_train_memory")
  parser.add_argument("--cases", default="6,60")
  parser.add_argument("--shape", default="200,512,512")
  parser.add_argument("--distinct", type=int, default=6)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--patch", default="32,64,64")
  parser.add_argument("--cached", type=int, default=4)
  parser.add_argument("--keep", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  rows = measure(args.root, [int(c) for c in args.cases.split(",")],
                 [int(s) for s in args.shape.split(",")], distinct=args.distinct,
                 steps=args.steps, patch=[int(p) for p in args.patch.split(",")],
                 cached=args.cached, keep=args.keep)
  gib = 1 << 30
  for row in rows:
    print(f"{row['cases']} cases ({row['train_cases']} in the training fold) of "
          f"{'x'.join(map(str, row['shape']))}: peak RSS {row['peak_rss_bytes'] / gib:.2f} GiB "
          f"(before training {row['rss_before_train_bytes'] / gib:.2f} GiB), train "
          f"{row['train_seconds']:.0f} s, prepare {row['prepare_seconds']:.0f} s")
  if len(rows) > 1:
    print(f"difference {rows[-1]['cases']} - {rows[0]['cases']} cases: "
          f"{(rows[-1]['peak_rss_bytes'] - rows[0]['peak_rss_bytes']) / gib:+.2f} GiB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
