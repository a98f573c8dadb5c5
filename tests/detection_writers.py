"""Tiny detection datasets in the real layouts, written for the tests (`import detection_writers`).

nnDetection task folders (NIfTI instance maps + per-case JSON), LUNA16 folders
(MetaImage `.mhd`/`.raw` written by hand, `annotations.csv` in LPS world mm)
and segmentation folders with separate lesions. Every writer returns the truth
it wrote (boxes, classes, centres) so a test can compare the prepared
examples with it. Volumes are tiny, spacings anisotropic, affines oblique
where the format allows it, so an axis or geometry mix-up shows.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from dataset_writers import oblique_affine

from medjax.data import io

SHAPE = (10, 14, 12)  # (D, H, W)
SPACING = (2.5, 0.9, 0.7)


def file_world(file_affine: np.ndarray, index: Sequence[float]) -> np.ndarray:
  """RAS mm of array index `(a0, a1, a2)` through a file affine (whose voxel axes are reversed)."""
  return (np.asarray(file_affine) @ np.r_[np.asarray(index, np.float64)[::-1], 1.0])[:3]


def _image(rng: np.random.Generator, shape: Sequence[int], instances: np.ndarray) -> np.ndarray:
  """Lung-like background (-850 HU) with lesions at 20 HU, noise of sd 30 HU."""
  return (np.where(instances > 0, 20.0, -850.0) + rng.normal(0, 30, shape)).astype(np.float32)


def write_nndetection(root: str, *, cases: Sequence[str] = ("case_a", "case_b", "case_n"),
                      test_cases: Sequence[str] = (), yaml_file: bool = False,
                      class_names: Sequence[str] = ("nodule", "mass")) -> dict[str, Any]:
  """An nnDetection task folder; returns `{case: {"boxes", "classes", "affine", "split"}}`.

  Case a has instance ids 2 and 5 (classes 1 and 0), case b one instance
  (id 1, class 0), any further case none (an empty JSON): ids need not be
  consecutive, and a case without lesions is a normal case.
  """
  lesions = {0: [((2, 3, 4), (5, 7, 6), 2, 1), ((6, 8, 1), (9, 12, 4), 5, 0)],
             1: [((1, 1, 1), (4, 5, 5), 1, 0)]}
  for folder in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
    os.makedirs(os.path.join(root, "raw_splitted", folder), exist_ok=True)
  truth = {}
  rng = np.random.default_rng(0)
  splits = [(c, "train") for c in cases] + [(c, "test") for c in test_cases]
  for n, (case, split) in enumerate(splits):
    instances = np.zeros(SHAPE, np.int16)
    info = {}
    for start, stop, number, cls in lesions.get(n, []):
      instances[tuple(slice(a, b) for a, b in zip(start, stop))] = number
      info[str(number)] = cls
    affine = oblique_affine(SPACING, angle=0.3 + 0.1 * n)
    images, labels = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    io.write_nifti(os.path.join(root, "raw_splitted", images, f"{case}_0000.nii.gz"),
                   _image(rng, SHAPE, instances), affine)
    io.write_nifti(os.path.join(root, "raw_splitted", labels, f"{case}.nii.gz"), instances, affine)
    with open(os.path.join(root, "raw_splitted", labels, f"{case}.json"), "w") as handle:
      json.dump({"instances": info}, handle)
    order = sorted(lesions.get(n, []), key=lambda lesion: lesion[2])
    truth[case] = {"boxes": [list(start) + list(stop) for start, stop, _, _ in order],
                   "classes": [cls for _, _, _, cls in order], "affine": affine, "split": split,
                   "instances": instances}
  meta = {"task": "Task100_Tiny", "name": "Tiny", "dim": 3, "test_labels": bool(test_cases),
          "labels": {str(i): name for i, name in enumerate(class_names)},
          "modalities": {"0": "CT"}}
  if yaml_file:
    import yaml  # pylint: disable=g-import-not-at-top
    with open(os.path.join(root, "dataset.yaml"), "w") as handle:
      yaml.safe_dump(meta, handle)
  else:
    with open(os.path.join(root, "dataset.json"), "w") as handle:
      json.dump(meta, handle)
  return truth


def write_metaimage(path: str, array: np.ndarray, spacing_xyz: Sequence[float],
                    offset_xyz: Sequence[float]) -> str:
  """A `.mhd` header + `.raw` int16 file as LUNA16 ships them (identity TransformMatrix, LPS)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  header = "\n".join([
      "ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
      "CompressedData = False", "TransformMatrix = 1 0 0 0 1 0 0 0 1",
      "Offset = " + " ".join(f"{v:g}" for v in offset_xyz), "CenterOfRotation = 0 0 0",
      "AnatomicalOrientation = RAI",
      "ElementSpacing = " + " ".join(f"{v:g}" for v in spacing_xyz),
      "DimSize = " + " ".join(str(n) for n in array.shape[::-1]),
      "ElementType = MET_SHORT", f"ElementDataFile = {stem}.raw", ""])
  with open(path, "w") as handle:
    handle.write(header)
  np.ascontiguousarray(array, "<i2").tofile(os.path.join(os.path.dirname(path), f"{stem}.raw"))
  return path


LUNA_SPACING_XYZ = (0.7, 0.8, 2.5)  # column, row, slice (mm)
LUNA_OFFSET_XYZ = (-150.0, -170.0, -320.0)  # LPS mm of voxel (0, 0, 0)


def luna_lps(index: Sequence[float]) -> np.ndarray:
  """LPS mm of array index `(slice, row, column)` in the test series (identity directions)."""
  k, j, i = (float(v) for v in index)
  return np.asarray(LUNA_OFFSET_XYZ) + np.array([i, j, k]) * np.asarray(LUNA_SPACING_XYZ)


def write_luna16(root: str, *, extra_rows: Sequence[str] = (),
                 excluded_rows: Sequence[str] = ()) -> dict[str, Any]:
  """A LUNA16 folder: series `1.2.3.1` (subset0, two nodules) and `1.2.3.2` (subset1, none).

  Returns `{"nodules": {uid: [(index (3,), diameter)]}, "excluded": {uid: [...]}}`: the
  array indices the annotations were placed at.
  """
  shape = (12, 40, 44)
  nodules = {"1.2.3.1": [((4.0, 12.0, 15.0), 6.0), ((8.0, 28.0, 30.0), 4.0)], "1.2.3.2": []}
  excluded = {"1.2.3.1": [((2.0, 30.0, 10.0), 3.0)], "1.2.3.2": [((6.0, 20.0, 20.0), -1.0)]}
  rng = np.random.default_rng(5)
  for subset, uid in enumerate(sorted(nodules)):
    os.makedirs(os.path.join(root, f"subset{subset}"), exist_ok=True)
    array = np.round(rng.normal(-850, 30, shape)).astype(np.int16)
    write_metaimage(os.path.join(root, f"subset{subset}", f"{uid}.mhd"), array, LUNA_SPACING_XYZ,
                    LUNA_OFFSET_XYZ)

  def rows(table):
    out = []
    for uid, entries in table.items():
      for index, diameter in entries:
        x, y, z = luna_lps(index)
        out.append(f"{uid},{x:.4f},{y:.4f},{z:.4f},{diameter:g}")
    return out

  header = "seriesuid,coordX,coordY,coordZ,diameter_mm"
  with open(os.path.join(root, "annotations.csv"), "w") as handle:
    handle.write("\n".join([header] + rows(nodules) + list(extra_rows)) + "\n")
  with open(os.path.join(root, "annotations_excluded.csv"), "w") as handle:
    handle.write("\n".join([header] + rows(excluded) + list(excluded_rows)) + "\n")
  return {"nodules": nodules, "excluded": excluded, "shape": shape}


def write_lesion_segmentations(root: str, *, layout: str = "nnunet_raw") -> dict[str, Any]:
  """A segmentation folder (nnU-Net raw or Decathlon) with labels organ 1, lesion 2.

  Case `seg_a` has two separate lesions, `seg_b` one, `seg_c` none; the
  truth lists the lesion boxes in `ndimage.label` order (first voxel in raster order).
  """
  lesion_boxes = {"seg_a": [((1, 2, 2), (3, 5, 5)), ((6, 9, 7), (9, 12, 11))],
                  "seg_b": [((3, 3, 3), (7, 8, 6))], "seg_c": []}
  folders = ("imagesTr", "labelsTr")
  for folder in folders:
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  rng = np.random.default_rng(3)
  truth, training = {}, []
  for n, (case, boxes) in enumerate(lesion_boxes.items()):
    label = np.zeros(SHAPE, np.uint8)
    label[1:-1, 1:-1, 1:-1] = 1
    for start, stop in boxes:
      label[tuple(slice(a, b) for a, b in zip(start, stop))] = 2
    affine = oblique_affine(SPACING, angle=0.2 + 0.1 * n)
    image = _image(rng, SHAPE, (label == 2).astype(np.int16))
    if layout == "nnunet_raw":
      io.write_nifti(os.path.join(root, "imagesTr", f"{case}_0000.nii.gz"), image, affine)
      io.write_nifti(os.path.join(root, "labelsTr", f"{case}.nii.gz"), label, affine)
    else:
      io.write_nifti(os.path.join(root, "imagesTr", f"{case}.nii.gz"), image[..., None], affine,
                     channels=True)
      io.write_nifti(os.path.join(root, "labelsTr", f"{case}.nii.gz"), label, affine)
      training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    truth[case] = {"boxes": [list(a) + list(b) for a, b in boxes], "affine": affine}
  if layout == "nnunet_raw":
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2},
            "numTraining": len(lesion_boxes), "file_ending": ".nii.gz"}
  else:
    meta = {"name": "Tiny", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "organ", "2": "tumour"}, "training": training}
  with open(os.path.join(root, "dataset.json"), "w") as handle:
    json.dump(meta, handle)
  return truth
