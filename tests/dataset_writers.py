"""Tiny raw datasets in each layout, written for the tests (`from dataset_writers import ...`).

Every writer returns what it wrote (arrays in `read_image`'s axis order,
spacing, affine per case), so a test can compare a prepared dataset with the
truth. Volumes are tiny (default `(8, 12, 10)`), the spacing anisotropic and
the affines oblique (rotated about two axes, non-zero origin), so an axis or
a geometry mix-up shows. Images look like CT/MR: a bright organ (label 1)
with a darker lesion (label 2) in noisy background, different per case.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from medjax.data import io

SHAPE = (8, 12, 10)
SPACING = (2.5, 0.9, 0.7)  # mm per array axis (D, H, W)


def oblique_affine(spacing: Sequence[float], *, angle: float = 0.3,
                   origin: Sequence[float] = (-40.0, 25.5, 110.0)) -> np.ndarray:
  """4x4 voxel (i, j, k) -> RAS affine: rotated by `angle` about z and `angle / 2` about x.

  `spacing` is per array axis `(D, H, W)` or `(H, W)` (`read_image`'s
  order), so voxel axis i has `spacing[-1]`.
  """
  c, s = np.cos(angle), np.sin(angle)
  cx, sx = np.cos(angle / 2), np.sin(angle / 2)
  rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array(
      [[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  affine = np.eye(4)
  spacing_ijk = list(np.asarray(spacing, np.float64)[::-1]) + [1.0] * (3 - len(spacing))  # 2D: k 1 mm
  affine[:3, :3] = rotation * np.asarray(spacing_ijk)[None, :]
  affine[:3, 3] = origin
  return affine


def make_case(seed: int, shape: Sequence[int] = SHAPE, channels: int = 1,
              num_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """(image float32 `(*shape, channels)`, label uint8 `(*shape)`) of one synthetic case.

  The organ (1) is an ellipsoid away from the border, the lesion (2) a
  smaller one inside it; channel c has organ intensity 60 + 40 c, lesion
  30 + 40 c, background -100 + 10 c, plus Gaussian noise of sd 15: contrast
  of a few tens under noise of similar size, as real CT.
  """
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
  centre = (np.asarray(shape) - 1) / 2 + rng.uniform(-0.5, 0.5, len(shape))
  radius = np.asarray(shape) * rng.uniform(0.28, 0.36)
  organ = (((grid - centre) / radius) ** 2).sum(-1) <= 1
  lesion = (((grid - centre - radius * 0.2) / (radius * 0.4)) ** 2).sum(-1) <= 1
  label = organ.astype(np.uint8)
  if num_classes > 2:
    label[lesion & organ] = 2
  image = np.empty(tuple(shape) + (channels,), np.float32)
  for c in range(channels):
    base = np.choose(label, [-100.0 + 10 * c, 60.0 + 40 * c, 30.0 + 40 * c][:num_classes])
    image[..., c] = base + rng.normal(0, 15, shape)
  return image, label


def write_nrrd(path: str, array: np.ndarray, affine: np.ndarray) -> str:
  """Writes `array` `(D, H, W)` as NRRD in LPS space with `affine`'s geometry."""
  import nrrd  # pylint: disable=g-import-not-at-top
  lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
  header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
            "space origin": lps[:3, 3]}
  nrrd.write(path, np.ascontiguousarray(array), header, index_order="C")
  return path


def write_image(path: str, array: np.ndarray, affine: np.ndarray) -> str:
  """NIfTI or NRRD by the file ending."""
  if path.endswith(".nrrd"):
    return write_nrrd(path, array, affine)
  return io.write_nifti(path, array, affine)


def write_nnunet_raw(root: str, cases: Sequence[str] = ("case_a", "case_b", "case_c"), *,
                     channel_names: Sequence[str] = ("CT", "T2"), file_ending: str = ".nii.gz",
                     labels: Optional[dict[str, int]] = None,
                     test_cases: Sequence[str] = (), test_labelled: bool = True,
                     shape: Sequence[int] = SHAPE, spacing: Sequence[float] = SPACING,
                     seed: int = 0) -> dict[str, dict[str, Any]]:
  """An nnU-Net v2 raw folder; returns `{case: {"image", "label", "spacing", "affine", "split"}}`.

  Case `n` (in `cases` then `test_cases` order) gets seed `seed + n`, its
  affine an angle of `0.3 + 0.05 n`.
  """
  labels = labels or {"background": 0, "organ": 1, "lesion": 2}
  folders = ["imagesTr", "labelsTr"] + (["imagesTs"] if test_cases else []) + (
      ["labelsTs"] if test_cases and test_labelled else [])
  for folder in folders:
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  truth = {}
  for n, (case, split) in enumerate([(c, "train") for c in cases] + [(c, "test") for c in test_cases]):
    image, label = make_case(seed + n, shape, len(channel_names), len(labels))
    affine = oblique_affine(spacing, angle=0.3 + 0.05 * n)
    images, labels_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    for c in range(len(channel_names)):
      write_image(os.path.join(root, images, f"{case}_{c:04d}{file_ending}"), image[..., c], affine)
    if split == "train" or test_labelled:
      write_image(os.path.join(root, labels_dir, case + file_ending), label, affine)
    truth[case] = {"image": image, "label": label, "spacing": tuple(spacing), "affine": affine,
                   "split": split}
  with open(os.path.join(root, "dataset.json"), "w") as handle:
    json.dump({"channel_names": {str(c): n for c, n in enumerate(channel_names)},
               "labels": labels, "numTraining": len(cases), "file_ending": file_ending,
               "name": os.path.basename(root)}, handle)
  return truth


def write_decathlon(root: str, cases: Sequence[str] = ("brats_001", "brats_002", "brats_003"), *,
                    modalities: Sequence[str] = ("FLAIR", "T1w"), test_cases: Sequence[str] = (),
                    shape: Sequence[int] = SHAPE, spacing: Sequence[float] = SPACING,
                    seed: int = 10) -> dict[str, dict[str, Any]]:
  """A Medical Segmentation Decathlon task folder: several modalities in one 4D NIfTI per case."""
  for folder in ("imagesTr", "labelsTr", "imagesTs"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  truth = {}
  training, test = [], []
  for n, case in enumerate(list(cases) + list(test_cases)):
    image, label = make_case(seed + n, shape, len(modalities))
    affine = oblique_affine(spacing, angle=0.2 + 0.05 * n)
    test_case = n >= len(cases)
    image_path = f"./{'imagesTs' if test_case else 'imagesTr'}/{case}.nii.gz"
    io.write_nifti(os.path.join(root, image_path), image, affine, channels=True)
    if test_case:
      test.append(image_path)
    else:
      io.write_nifti(os.path.join(root, f"labelsTr/{case}.nii.gz"), label, affine)
      training.append({"image": image_path, "label": f"./labelsTr/{case}.nii.gz"})
    truth[case] = {"image": image, "label": label, "spacing": tuple(spacing), "affine": affine,
                   "split": "test" if test_case else "train"}
  # MSD folders carry macOS resource forks next to the images; they must be ignored.
  with open(os.path.join(root, "imagesTr", f"._{cases[0]}.nii.gz"), "wb") as handle:
    handle.write(b"\x00\x05\x16\x07 not an image")
  with open(os.path.join(root, "dataset.json"), "w") as handle:
    json.dump({"name": "BrainTumourTiny", "modality": {str(c): m for c, m in enumerate(modalities)},
               "labels": {"0": "background", "1": "edema", "2": "enhancing tumour"},
               "numTraining": len(training), "numTest": len(test), "training": training,
               "test": test}, handle)
  return truth


def write_lits(root: str, numbers: Sequence[int] = (0, 1, 2), *, test_numbers: Sequence[int] = (),
               shape: Sequence[int] = SHAPE, spacing: Sequence[float] = (1.5, 0.8, 0.8),
               seed: int = 20) -> dict[str, dict[str, Any]]:
  """LiTS files as downloaded: `Training Batch 1/volume-N.nii` + `segmentation-N.nii`.

  Even case numbers go to ``Training Batch 1``, odd ones to ``Training Batch 2``;
  `test_numbers` become unlabelled ``test-volume-N.nii``. Intensities are int16 HU.
  """
  truth = {}
  for n in numbers:
    folder = os.path.join(root, f"Training Batch {1 + n % 2}")
    os.makedirs(folder, exist_ok=True)
    image, label = make_case(seed + n, shape, 1)
    image = np.round(image[..., 0]).astype(np.int16)
    affine = oblique_affine(spacing, angle=0.1 * n)
    io.write_nifti(os.path.join(folder, f"volume-{n}.nii"), image, affine)
    io.write_nifti(os.path.join(folder, f"segmentation-{n}.nii"), label, affine)
    truth[f"volume-{n}"] = {"image": image[..., None].astype(np.float32), "label": label,
                            "spacing": tuple(spacing), "affine": affine, "split": "train",
                            "file_dtype": "int16"}
  for n in test_numbers:
    os.makedirs(os.path.join(root, "Test"), exist_ok=True)
    image, _ = make_case(seed + 100 + n, shape, 1)
    io.write_nifti(os.path.join(root, "Test", f"test-volume-{n}.nii"),
                   image[..., 0].astype(np.int16), oblique_affine(spacing))
  return truth


def write_medmnist(root: str, flag: str, size: int = 28, *,
                   counts: Sequence[int] = (6, 2, 3), seed: int = 30) -> dict[str, dict[str, np.ndarray]]:
  """A MedMNIST `.npz` with `counts` (train, val, test) random images and labels.

  Returns `{"train": {"images", "labels"}, "validation": ..., "test": ...}`
  as stored (labels `(N, 1)`, chestmnist `(N, 14)`).
  """
  from medjax.data.builders import medmnist  # pylint: disable=g-import-not-at-top
  info = medmnist.FLAGS[flag]
  rng = np.random.default_rng(seed)
  arrays, truth = {}, {}
  for split, key, count in zip(("train", "validation", "test"), ("train", "val", "test"), counts):
    images = rng.integers(0, 256, (count,) + medmnist.image_shape(flag, size), dtype=np.uint8)
    if info.task.startswith("multi-label"):
      labels = rng.integers(0, 2, (count, info.num_classes), dtype=np.uint8)
    else:
      labels = rng.integers(0, info.num_classes, (count, 1), dtype=np.uint8)
    arrays[f"{key}_images"], arrays[f"{key}_labels"] = images, labels
    truth[split] = {"images": images, "labels": labels}
  os.makedirs(root, exist_ok=True)
  np.savez_compressed(os.path.join(root, medmnist.file_name(flag, size)), **arrays)
  return truth


# ----------------------------------------------------------------------------- KiTS19
KITS_SHAPE = (14, 40, 36)  # (slices, H, W), KiTS19's axis order
KITS_SPACING = (3.0, 0.8, 0.9)


def make_kits_case(seed: int, shape: Sequence[int] = KITS_SHAPE) -> tuple[np.ndarray, np.ndarray]:
  """A contrast CT in HU and its labels: body (~40 HU) in air, an enhanced kidney (label 1,
  ~170 HU) and a hypodense tumour in it (label 2, ~40 HU darker, a few % of the voxels),
  Gaussian noise of 20 HU."""
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
  body = (grid[1] ** 2 + grid[2] ** 2) < 0.85
  centre = np.array([0.0, rng.uniform(-0.2, 0.2), rng.uniform(0.1, 0.3)])
  radii = np.array([0.7, 0.35, 0.25])
  kidney = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1
  t_centre = centre + np.array([0.1, 0.1, 0.0])
  tumour = (((grid - t_centre[:, None, None, None]) / 0.15) ** 2).sum(0) < 1
  tumour &= kidney
  image = np.where(body, 40.0, -1000.0) + rng.normal(0.0, 20.0, size=shape)
  image[kidney] += 130.0
  image[tumour] -= 40.0
  label = np.zeros(shape, np.uint8)
  label[kidney] = 1
  label[tumour] = 2
  return image.astype(np.float32), label


def write_kits19(root: str, case_numbers: Sequence[int] = (0, 1, 2, 3, 4), *,
                 shape: Sequence[int] = KITS_SHAPE, spacing: Sequence[float] = KITS_SPACING
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The KiTS19 repository's `data/` layout: `case_XXXXX/imaging.nii.gz` (int16 HU, as
  KiTS19) and `segmentation.nii.gz` (uint8); `pixdim` = `spacing` in array-axis order.
  Returns `{case: (image float32, label)}` as written."""
  import nibabel
  written = {}
  for number in case_numbers:
    case = f"case_{number:05d}"
    image, label = make_kits_case(number, shape)
    image = np.round(image).astype(np.int16)
    folder = os.path.join(root, case)
    os.makedirs(folder, exist_ok=True)
    affine = np.diag(list(spacing) + [1.0])
    nibabel.save(nibabel.Nifti1Image(image, affine), os.path.join(folder, "imaging.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(label, affine), os.path.join(folder, "segmentation.nii.gz"))
    written[case] = (image.astype(np.float32), label)
  return written
