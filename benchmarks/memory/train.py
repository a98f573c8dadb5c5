"""Peak host memory of training on a folder dataset as it grows from a few cases to many.

Training streams its cases (`medjax.data.pipeline.case_cache`: random access into the
prepared `array_record` files, a few decoded cases kept), so its memory must
not grow with the dataset. `measure(...)` writes nnU-Net raw folders of
`cases` CT volumes `(D, H, W)` int16 (`prepare.synthetic_case`: air, body, a
liver-like ellipsoid labelled 1 at +30 HU under 20 HU noise; `distinct`
different volumes, each written once and hard-linked under the other case
names, so a 60-case folder costs the disk of `distinct` cases; every case is
still read, prepared and stored on its own), prepares each folder in a
subprocess (`datasets.load_source`, not measured), then trains
`experiments/configs/unet3d_folder.py` (a tiny U-Net, `patch`, a few steps,
`cached_cases` decoded cases) in a fresh subprocess per folder and reports
that process's peak resident set size (`rss.lifetime_peak`: interpreter, JAX,
the compiled step and the data pipeline) and its size before training.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import time
from typing import Sequence

from benchmarks.memory import fresh_process, rss
from medjax.errors import InputError

SPACING = (2.5, 0.8, 0.8)


def write_folder(root: str, pool: str, cases: int, shape: Sequence[int], distinct: int) -> str:
  """An nnU-Net raw folder `root` of `cases` cases (`.nii`), hard links to `distinct`
  volumes written once into `pool`."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from benchmarks.memory import prepare  # pylint: disable=g-import-not-at-top
  from medjax.data import io  # pylint: disable=g-import-not-at-top

  os.makedirs(pool, exist_ok=True)
  affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])  # voxel axes = array axes reversed
  for seed in range(distinct):
    image_path = os.path.join(pool, f"volume_{seed}.nii")
    if not os.path.exists(image_path):
      image, label = prepare.synthetic_case(shape, SPACING, seed=seed)
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
  before = rss.current()
  start = time.perf_counter()
  loop.train(config, loop.prepare_workdir(config, workdir))
  return {"train_cases": train_cases, "rss_before_train_bytes": before,
          "peak_rss_bytes": rss.lifetime_peak(), "train_seconds": time.perf_counter() - start}


def child_main(spec_json: str) -> dict:
  """One step of `measure` inside a fresh subprocess: {"kind": "prepare" | "train", ...}."""
  spec = json.loads(spec_json)
  if spec.pop("kind") == "prepare":
    return _child_prepare(**spec)
  return _child_train(**spec)


def _run_child(**spec) -> dict:
  return fresh_process.run(__name__, spec)


def measure(root: str, cases: Sequence[int] = (6, 60), shape: Sequence[int] = (200, 512, 512), *,
            distinct: int = 6, steps: int = 8, patch: Sequence[int] = (32, 64, 64),
            cached: int = 4, keep: bool = False) -> list[dict]:
  """One row per folder size (see the module docstring); the folders and prepared datasets
  under `root` are deleted at the end unless `keep`.

  Raises:
    InputError: case counts, sizes or step counts that are not positive (one line).
  """
  for flag, values in (("cases", cases), ("shape", shape), ("patch", patch)):
    if not values or any(int(v) < 1 for v in values):
      raise InputError(f"--{flag}={','.join(map(str, values))}: expected positive integers")
  if len(shape) != 3 or len(patch) != 3:
    raise InputError(f"--shape={','.join(map(str, shape))}, --patch={','.join(map(str, patch))}: "
                     "expected three sizes each (D, H, W)")
  for flag, value in (("distinct", distinct), ("steps", steps), ("cached", cached)):
    if value < 1:
      raise InputError(f"--{flag}={value}: expected a positive integer")
  rows = []
  try:
    for count in cases:
      folder = write_folder(os.path.join(root, f"raw_{count}"), os.path.join(root, "pool"),
                            count, shape, distinct)
      data_dir = os.path.join(root, "data")
      row = {"cases": count, "distinct_volumes": min(distinct, count), "shape": list(shape),
             "steps": steps, "patch": list(patch), "cached_cases": cached}
      row.update(_run_child(kind="prepare", manual_dir=folder, data_dir=data_dir))
      row.update(_run_child(kind="train", manual_dir=folder, data_dir=data_dir,
                            workdir=os.path.join(root, f"run_{count}"), steps=steps,
                            patch=list(patch), cached=cached))
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
