"""Detect lesions in image files with a trained detection run: per-case JSON and `candidates.csv`.

For each case `<case>` under the input (the files and DICOM series that
`predict_files.find_inputs` finds), the run's `WindowDetector` (its window,
mirroring and the thresholds stored in `detection_thresholds.json`) gives the
detections, written as:

* `DIR/<case>_detections.json`: the input, shape, spacing, the thresholds, and
  per detection (by decreasing score) `score`, `finding` (score >= the
  operating threshold), `box_voxel` (`(z1, y1, x1, z2, y2, x2)` half-open array
  indices), `box_world_mm` (the world (RAS) hull of the box), `center_voxel`,
  `center_world_mm` (RAS), `diameter_mm` (the mean of the box's sides in mm),
  with several samples (mirror variants, ensemble members) its uncertainty
  (`score_std`, `agreement`, `box_std_voxels`: `medjax.uncertainty.detection_spread`),
  and the seconds spent reading, in the network, NMS and clustering;
* `DIR/candidates.csv`: every candidate of every case in the LUNA16 format
  (`seriesuid,coordX,coordY,coordZ,probability`; the coordinates in world mm
  in LPS, the ITK/MetaImage convention the LUNA16 evaluation script reads);
* with `boxes_nifti`, `DIR/<case>_boxes.nii.gz`: an int16 map on the input's
  grid where the box of finding i (1-based, score order) holds i.

World coordinates come from the file's affine (`medjax.data.io.read_image`),
converted to the array-axis affine of `medjax.detection.boxes`
(`detection_examples.array_axes_affine`).
"""
from __future__ import annotations

import csv
import io as text_io
import os
import sys
import time
from typing import Callable, Optional

import numpy as np

from medjax.data import io
from medjax.data.builders.detection_examples import array_axes_affine
from medjax.detection import boxes as box_ops
from medjax.errors import InputError
from medjax.inference import detect, predict_files, restore
from medjax.train.workdir import Workdir, atomic_write, atomic_write_json, atomic_write_text

DETECTIONS_SUFFIX = "_detections.json"
BOXES_SUFFIX = "_boxes.nii.gz"
CANDIDATES = "candidates.csv"
LUNA16_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")

Log = Callable[[str], None]


def ras_to_lps(points: np.ndarray) -> np.ndarray:
  """`(N, 3)` RAS mm -> LPS mm (x and y negated), the LUNA16 / ITK world frame."""
  points = np.asarray(points, np.float64).reshape(-1, 3)
  return points * np.array([-1.0, -1.0, 1.0])


def detection_rows(found: detect.Detections, affine: np.ndarray, spacing, threshold: float,
                   spread: Optional[dict] = None) -> list[dict]:
  """The JSON records of one case's detections (module docstring); with `spread`
  (`detect.detection_uncertainty`), also `score_std`, `agreement` and `box_std_voxels`."""
  rows = []
  if not len(found.boxes):
    return rows
  world = box_ops.boxes_to_world(found.boxes, affine)
  centers_voxel = box_ops.box_centers(np.asarray(found.boxes, np.float64))
  centers_world = box_ops.voxel_to_world(centers_voxel, affine)
  diameters = (box_ops.box_sizes(np.asarray(found.boxes, np.float64))
               * np.asarray(spacing, np.float64)).mean(axis=1)
  for i in range(len(found.boxes)):
    rows.append({"score": float(found.scores[i]), "finding": bool(found.scores[i] >= threshold),
                 "class": int(found.classes[i]),
                 "box_voxel": [round(float(v), 3) for v in found.boxes[i]],
                 "box_world_mm": [round(float(v), 3) for v in world[i]],
                 "center_voxel": [round(float(v), 3) for v in centers_voxel[i]],
                 "center_world_mm": [round(float(v), 3) for v in centers_world[i]],
                 "diameter_mm": round(float(diameters[i]), 3)})
    if spread is not None:
      box_std = float(spread["box_std"][i])
      rows[-1].update(score_std=round(float(spread["score_std"][i]), 4),
                      agreement=round(float(spread["agreement"][i]), 4),
                      box_std_voxels=round(box_std, 3) if np.isfinite(box_std) else None)
  return rows


def box_map(shape, boxes: np.ndarray) -> np.ndarray:
  """int16 `(*shape)`: box i (1-based) filled with i (later boxes do not overwrite earlier)."""
  out = np.zeros(tuple(shape), np.int16)
  for number, box in reversed(list(enumerate(boxes, start=1))):
    n = len(shape)
    lo = np.clip(np.floor(box[:n]), 0, shape).astype(int)
    hi = np.clip(np.ceil(box[n:]), 0, shape).astype(int)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = number
  return out


def load_detector(workdir, *, mirror: bool = False) -> tuple[detect.WindowDetector,
                                                             detect.Postprocessing, object]:
  """`(detector, thresholds, config)` of a trained detection run."""
  from medjax.train.tasks import detection  # pylint: disable=import-outside-toplevel
  workdir = Workdir.of(workdir)
  config = workdir.read_config()
  if config.get("task") != "detection":
    raise InputError(f"{workdir.path}: config.task={config.get('task')!r}; expected a "
                     "detection run")
  post = workdir.read_detection_thresholds()
  if post is None:
    raise InputError(f"{workdir.detection_thresholds_path}: missing; the run was not evaluated "
                     "(its evaluation chooses the thresholds on the validation split)")
  config, model, variables = restore.load_run(workdir)
  if mirror:
    config.unlock()
    config.eval.mirror_axes = tuple(range(len(config.patch_size)))
  return detection.make_detector(config, model, variables), post, config


def predict_case(detector: detect.WindowDetector, post: detect.Postprocessing, path: str,
                 output: str, *, boxes_nifti: bool = False) -> dict:
  """Detects the lesions of one image file or DICOM series; writes and returns its summary."""
  name = predict_files.case_name(path)
  start = time.perf_counter()
  volume = io.read_image(path)
  if volume.array.ndim != 3:
    raise InputError(f"{path}: a {volume.array.ndim}D image; expected a 3D volume")
  image = np.asarray(volume.array, np.float32)
  if not np.all(np.isfinite(image)):
    raise InputError(f"{path}: NaN or infinite intensities")
  seconds = {"read": time.perf_counter() - start}
  affine = array_axes_affine(volume.affine)
  raw = detector.detect_windows(image[..., None])
  found = detect.finish(raw, volume.spacing, post)
  seconds.update(found.timings)
  spread = detect.detection_uncertainty(raw, found, volume.spacing, post)
  os.makedirs(output, exist_ok=True)
  written = []
  if boxes_nifti:
    written.append(os.path.join(output, name + BOXES_SUFFIX))
    keep = found.boxes[found.scores >= post.score_threshold]
    with atomic_write(written[-1]) as tmp:
      io.write_nifti(tmp, box_map(image.shape, keep), volume.affine)
  written.append(os.path.join(output, name + DETECTIONS_SUFFIX))
  summary = {"case": name, "input": os.path.abspath(path), "shape": list(image.shape),
             "spacing": [float(s) for s in volume.spacing], "thresholds": post.to_json(),
             "detections": detection_rows(found, affine, volume.spacing, post.score_threshold,
                                          spread),
             "seconds": {k: round(float(v), 4) for k, v in seconds.items()},
             "outputs": written}
  atomic_write_json(written[-1], summary)
  return summary


def candidates_csv(summaries: list[dict]) -> str:
  """The LUNA16 `candidates.csv` text of the cases' detections (LPS world mm)."""
  out = text_io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(LUNA16_COLUMNS)
  for summary in summaries:
    if not summary["detections"]:
      continue
    lps = ras_to_lps([d["center_world_mm"] for d in summary["detections"]])
    for (x, y, z), d in zip(lps, summary["detections"]):
      writer.writerow([summary["case"], f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{d['score']:.6f}"])
  return out.getvalue()


def predict_folder(workdir, input_path: str, output: str, *, mirror: bool = False,
                   boxes_nifti: bool = False, log: Optional[Log] = None,
                   error: Optional[Log] = None) -> int:
  """Detects every case under `input_path` into `output` (module docstring).

  One line per case on `log`, one `error: <file>: ...` line per skipped case on
  `error` (the others still run); returns the number of skipped cases.

  Raises:
    InputError: a bad workdir (not a detection run, not evaluated), no inputs, or an
      output folder that cannot be made; raised before any case is read.
  """
  log = log or (lambda text: print(text, flush=True))
  error = error or (lambda text: print(text, file=sys.stderr, flush=True))
  detector, post, _ = load_detector(workdir, mirror=mirror)
  inputs = predict_files.find_inputs(input_path, skip=[output])
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:
    raise InputError(f"--output={output}: cannot create the folder ({e})") from None
  summaries, failed = [], 0
  for path in inputs:
    folder = predict_files.output_folder(path, input_path, output)
    try:
      summary = predict_case(detector, post, path, folder, boxes_nifti=boxes_nifti)
    except Exception as e:  # pylint: disable=broad-except  # one bad case must not stop the rest
      message = str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"
      error(f"error: {message}".splitlines()[0])
      failed += 1
      continue
    summaries.append(summary)
    findings = sum(d["finding"] for d in summary["detections"])
    log(f"{path} -> {', '.join(summary['outputs'])} ({len(summary['detections'])} candidates, "
        f"{findings} above the operating threshold {post.score_threshold:.3f})")
  path = atomic_write_text(os.path.join(output, CANDIDATES), candidates_csv(summaries))
  log(f"detected lesions in {len(summaries)} of {len(inputs)} case(s); candidates in {path}"
      + (f"; skipped {failed} (see the error lines)" if failed else ""))
  return failed
