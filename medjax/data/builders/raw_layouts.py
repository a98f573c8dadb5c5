"""The raw dataset layouts researchers already have, read into one description.

Three layouts (`LAYOUTS`), each a folder (`manual_dir`):

* ``nnunet_raw``, the nnU-Net v2 raw layout (Isensee et al., Nature Methods
  2021; nnU-Net's `dataset_format.md`)::

      dataset.json    {"channel_names": {"0": "CT", ...}, "labels": {"background": 0, "liver": 1, ...},
                       "numTraining": N, "file_ending": ".nii.gz"}
      imagesTr/{case}_{XXXX}{file_ending}   one file per channel, XXXX = 0000, 0001, ... (the channel_names keys)
      labelsTr/{case}{file_ending}          integer label map, same grid as the images
      imagesTs/{case}_{XXXX}{file_ending}   optional test images
      labelsTs/{case}{file_ending}          optional: makes the test set labelled

  Any format `medjax.data.io.read_image` reads (``.nii.gz``, ``.nii``,
  ``.nrrd``, ``.mha``, ...). Labels must be consecutive integers 0..K-1
  (nnU-Net's rule); region-based labels (lists) are not supported.

* ``decathlon``, a Medical Segmentation Decathlon task folder (Antonelli et
  al., Nature Communications 2022), e.g. ``Task01_BrainTumour/``::

      dataset.json    {"name": ..., "modality": {"0": "FLAIR", "1": "T1w", ...},
                       "labels": {"0": "background", "1": "edema", ...},
                       "training": [{"image": "./imagesTr/X.nii.gz", "label": "./labelsTr/X.nii.gz"}, ...],
                       "test": ["./imagesTs/Y.nii.gz", ...]}
      imagesTr/X.nii.gz   one file per case; several modalities as a 4D NIfTI (W, H, D, C)
      labelsTr/X.nii.gz
      imagesTs/Y.nii.gz   unlabelled test images (not prepared)

  Case ids are the file names without ``.nii.gz``. macOS ``._*`` files are
  ignored because only the listed files are read.

* ``lits``, the Liver Tumor Segmentation benchmark (Bilic et al., Medical
  Image Analysis 2023): ``volume-N.nii`` (CT, HU) and ``segmentation-N.nii``
  (0 background, 1 liver, 2 tumour) anywhere below `manual_dir` (the
  download's ``Training Batch 1/``, ``Training Batch 2/`` folders as they
  are; ``.nii.gz`` also accepted). Case ids are ``volume-N``;
  ``test-volume-N.nii`` (unlabelled) is not prepared.

`scan(layout, manual_dir)` lists the cases (a one-line `InputError` for a
bad `dataset.json` or folder); `read_case(case, dataset)` reads one case and
checks it, raising a one-line `InputError` that starts with ``case <id>:``
for: an image and label whose shape, spacing or affine disagree; label values
not declared in `dataset.json`; a missing channel or label file; NaN/inf
voxels; a corrupt or truncated file.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np

from medjax.data import io
from medjax.errors import InputError

LAYOUTS = ("nnunet_raw", "decathlon", "lits")

# Two files are on the same grid when their spacings agree to 1e-3 relative and
# their affines to 1e-4 relative + 1e-3 mm (header float rounding, e.g. NIfTI
# stores float32 while NRRD stores decimal text).
SPACING_RTOL = 1e-3
AFFINE_RTOL, AFFINE_ATOL = 1e-4, 1e-3

LITS_LABELS = {"background": 0, "liver": 1, "tumour": 2}


class RawCase(NamedTuple):
  """One case: one image path per channel (MSD: one 4D file), its label path or None."""
  case_id: str
  image_paths: tuple[str, ...]
  label_path: Optional[str]


class RawDataset(NamedTuple):
  """What a raw folder holds: channels, declared labels `{name: value}`, cases."""
  name: str
  channel_names: tuple[str, ...]
  labels: dict[str, int]
  training: tuple[RawCase, ...]
  test: tuple[RawCase, ...]
  test_labelled: bool
  file_ending: str
  four_d: bool = False  # one 4D file holds every channel (decathlon)


class LoadedCase(NamedTuple):
  """A checked case: `image` `(*S, C)` (see `read_case` for its dtype), `label` uint8 `(*S)` or None,
  `spacing` per array axis (mm), 4x4 voxel -> RAS `affine`."""
  image: np.ndarray
  label: Optional[np.ndarray]
  spacing: tuple[float, ...]
  affine: np.ndarray


# ------------------------------------------------------------------ scanning ---

def scan(layout: str, manual_dir: str) -> RawDataset:
  """The cases of the `layout` folder `manual_dir` (see the module docstring).

  Raises a one-line `InputError` for an unknown layout, a missing folder or
  `dataset.json`, a `dataset.json` without the layout's fields, labels that
  are not consecutive integers from 0, or a file name that fits no case.
  Per-case problems (a missing file, a bad image) are left to `read_case`,
  so that `skip_bad_cases` can skip them.
  """
  if layout not in LAYOUTS:
    raise InputError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
  manual_dir = os.path.abspath(os.path.expanduser(str(manual_dir)))
  if not os.path.isdir(manual_dir):
    raise InputError(f"{manual_dir}: no such folder (the {layout} dataset's manual_dir)")
  if layout == "nnunet_raw":
    return _scan_nnunet(manual_dir)
  if layout == "decathlon":
    return _scan_decathlon(manual_dir)
  return _scan_lits(manual_dir)


def _dataset_json(manual_dir: str, required: tuple[str, ...]) -> dict[str, Any]:
  path = os.path.join(manual_dir, "dataset.json")
  try:
    with open(path) as handle:
      meta = json.load(handle)
  except FileNotFoundError:
    raise InputError(f"{path}: no dataset.json in the dataset folder") from None
  except (OSError, ValueError) as error:
    raise InputError(f"{path}: not readable JSON ({str(error).splitlines()[0]})") from None
  if not isinstance(meta, dict):
    raise InputError(f"{path}: expected a JSON object, got {type(meta).__name__}")
  missing = [key for key in required if key not in meta]
  if missing:
    raise InputError(f"{path}: missing field(s) {missing}")
  return meta


def _check_labels(labels: dict[str, int], where: str) -> dict[str, int]:
  values = sorted(labels.values())
  if values != list(range(len(values))) or len(values) < 2:
    raise InputError(f"{where}: labels must be consecutive integers 0..K-1 with K >= 2 "
                     f"(0 = background), got {values}")
  if len(values) > 256:
    raise InputError(f"{where}: {len(values)} labels; at most 256 are supported (uint8)")
  return labels


def _channel_names(entry: Any, where: str, field: str) -> tuple[str, ...]:
  if not isinstance(entry, dict) or not entry:
    raise InputError(f"{where}: {field} must be a non-empty object {{\"0\": name, ...}}")
  try:
    by_number = {int(k): str(v) for k, v in entry.items()}
  except ValueError:
    raise InputError(f"{where}: {field} keys must be channel numbers \"0\", \"1\", ...; "
                     f"got {sorted(entry)}") from None
  if sorted(by_number) != list(range(len(entry))):
    raise InputError(f"{where}: {field} keys must be 0..{len(entry) - 1}, got {sorted(entry)}")
  return tuple(by_number[k] for k in range(len(entry)))


def _files(folder: str, ending: str) -> list[str]:
  if not os.path.isdir(folder):
    return []
  return sorted(f for f in os.listdir(folder) if f.endswith(ending) and not f.startswith("."))


def _scan_nnunet(manual_dir: str) -> RawDataset:
  meta = _dataset_json(manual_dir, ("channel_names", "labels", "file_ending"))
  where = os.path.join(manual_dir, "dataset.json")
  channels = _channel_names(meta["channel_names"], where, "channel_names")
  raw_labels = meta["labels"]
  if not isinstance(raw_labels, dict) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in raw_labels.values()):
    raise InputError(f"{where}: labels must map names to integers (region-based labels, "
                     f"lists of values, are not supported), got {raw_labels}")
  labels = _check_labels(dict(raw_labels), where)
  ending = meta["file_ending"]
  if not isinstance(ending, str) or not ending.startswith("."):
    raise InputError(f"{where}: file_ending must be a string such as \".nii.gz\", got {ending!r}")

  def cases(images: str, labels_dir: Optional[str]) -> tuple[RawCase, ...]:
    ids = set()
    for name in _files(os.path.join(manual_dir, images), ending):
      match = re.fullmatch(r"(.+)_(\d{4})", name[:-len(ending)])
      if not match:
        raise InputError(f"{os.path.join(manual_dir, images, name)}: expected a name "
                         f"{{case}}_{{XXXX}}{ending} (XXXX: 4-digit channel number)")
      if int(match.group(2)) >= len(channels):
        raise InputError(f"{os.path.join(manual_dir, images, name)}: channel "
                         f"{int(match.group(2))}, but dataset.json declares {len(channels)} "
                         f"channel(s) {list(channels)}")
      ids.add(match.group(1))
    if labels_dir:
      ids.update(name[:-len(ending)] for name in _files(os.path.join(manual_dir, labels_dir), ending))
    return tuple(RawCase(
        case_id=case,
        image_paths=tuple(os.path.join(manual_dir, images, f"{case}_{c:04d}{ending}")
                          for c in range(len(channels))),
        label_path=os.path.join(manual_dir, labels_dir, case + ending) if labels_dir else None)
        for case in sorted(ids))

  training = cases("imagesTr", "labelsTr")
  if not training:
    raise InputError(f"{manual_dir}: no training cases (expected imagesTr/{{case}}_0000{ending} "
                     f"and labelsTr/{{case}}{ending})")
  expected = meta.get("numTraining")
  if expected is not None and int(expected) != len(training):
    raise InputError(f"{where}: numTraining is {expected} but imagesTr/labelsTr hold "
                     f"{len(training)} cases")
  labelled = bool(_files(os.path.join(manual_dir, "labelsTs"), ending))
  test = cases("imagesTs", "labelsTs" if labelled else None)
  return RawDataset(str(meta.get("name", os.path.basename(manual_dir))), channels, labels,
                    training, test, labelled, ending)


def _msd_path(manual_dir: str, entry: Any, where: str) -> str:
  if not isinstance(entry, str) or not entry:
    raise InputError(f"{where}: expected a file path such as \"./imagesTr/X.nii.gz\", got {entry!r}")
  return os.path.normpath(os.path.join(manual_dir, entry))


def _msd_case_id(path: str) -> str:
  name = os.path.basename(path)
  for ending in (".nii.gz", ".nii"):
    if name.endswith(ending):
      return name[:-len(ending)]
  return name


def _scan_decathlon(manual_dir: str) -> RawDataset:
  meta = _dataset_json(manual_dir, ("modality", "labels", "training"))
  where = os.path.join(manual_dir, "dataset.json")
  channels = _channel_names(meta["modality"], where, "modality")
  try:
    labels = {str(name): int(value) for value, name in meta["labels"].items()}
  except (AttributeError, ValueError, TypeError):
    raise InputError(f"{where}: labels must map values to names, e.g. {{\"0\": \"background\", "
                     f"\"1\": \"tumour\"}}, got {meta['labels']}") from None
  _check_labels(labels, where)
  if not isinstance(meta["training"], list) or not meta["training"]:
    raise InputError(f"{where}: training must be a non-empty list of {{\"image\", \"label\"}}")
  training = []
  for index, entry in enumerate(meta["training"]):
    if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
      raise InputError(f"{where}: training[{index}] must be {{\"image\": ..., \"label\": ...}}, "
                       f"got {entry!r}")
    image = _msd_path(manual_dir, entry["image"], f"{where}: training[{index}].image")
    label = _msd_path(manual_dir, entry["label"], f"{where}: training[{index}].label")
    training.append(RawCase(_msd_case_id(image), (image,), label))
  test = [RawCase(_msd_case_id(p), (p,), None) for p in (
      _msd_path(manual_dir, e, f"{where}: test entry") for e in meta.get("test", []))]
  for split in (training, test):
    ids = [c.case_id for c in split]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
      raise InputError(f"{where}: case(s) {duplicates} listed twice")
  return RawDataset(str(meta.get("name", os.path.basename(manual_dir))), channels, labels,
                    tuple(sorted(training)), tuple(sorted(test)), False, ".nii.gz", four_d=True)


def _scan_lits(manual_dir: str) -> RawDataset:
  volumes: dict[int, str] = {}
  segmentations: dict[int, str] = {}
  for root, dirs, files in os.walk(manual_dir):
    dirs.sort()
    for name in sorted(files):
      match = re.fullmatch(r"(volume|segmentation)-(\d+)\.nii(\.gz)?", name)
      if not match:
        continue
      table = volumes if match.group(1) == "volume" else segmentations
      number = int(match.group(2))
      if number in table:
        raise InputError(f"{os.path.join(root, name)}: a second file for LiTS case {number} "
                         f"(the first is {table[number]})")
      table[number] = os.path.join(root, name)
  if not volumes:
    raise InputError(f"{manual_dir}: no LiTS volume-N.nii files below this folder")
  orphans = sorted(set(segmentations) - set(volumes))
  if orphans:
    raise InputError(f"{segmentations[orphans[0]]}: segmentation without volume-{orphans[0]}.nii")
  training = tuple(RawCase(f"volume-{n}", (volumes[n],),
                           segmentations.get(n, os.path.join(manual_dir, f"segmentation-{n}.nii")))
                   for n in sorted(volumes))
  return RawDataset("LiTS", ("CT",), dict(LITS_LABELS), training, (), False, ".nii")


# ------------------------------------------------------------------- reading ---

def _relative(path: str) -> str:
  """`path` as `folder/file` (enough to find it in a message)."""
  return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def _read(case: RawCase, path: str, what: str, channels: bool = False) -> io.Volume:
  if not os.path.exists(path):
    raise InputError(f"case {case.case_id}: {what} file {_relative(path)} is missing")
  try:
    return io.read_image_channels(path) if channels else io.read_image(path)
  except InputError as error:
    raise InputError(f"case {case.case_id}: {what}: {error}") from None


def _same_grid(case: RawCase, what: str, shape: tuple[int, ...], spacing, affine,
               ref: io.Volume, ref_shape: tuple[int, ...], ref_what: str) -> None:
  if tuple(shape) != tuple(ref_shape):
    raise InputError(f"case {case.case_id}: {what} shape {tuple(shape)} differs from the "
                     f"{ref_what} shape {tuple(ref_shape)}")
  if not np.allclose(spacing, ref.spacing, rtol=SPACING_RTOL, atol=0):
    raise InputError(f"case {case.case_id}: {what} spacing "
                     f"{tuple(round(s, 4) for s in spacing)} differs from the {ref_what} spacing "
                     f"{tuple(round(s, 4) for s in ref.spacing)}")
  if not np.allclose(affine, ref.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
    worst = float(np.max(np.abs(np.asarray(affine) - ref.affine)))
    raise InputError(f"case {case.case_id}: {what} affine differs from the {ref_what} affine "
                     f"(by up to {worst:.4g} mm; orientation or origin disagree)")


def _slabs(array: np.ndarray, voxels: int = 1 << 22) -> Iterator[np.ndarray]:
  """Views of `array` along axis 0 of about `voxels` voxels each: checks of a large
  volume allocate a slab's worth of temporaries, not the volume's."""
  step = max(1, voxels // max(1, int(np.prod(array.shape[1:]))))
  for start in range(0, array.shape[0], step):
    yield array[start:start + step]


def _check_finite(case: RawCase, array: np.ndarray, what: str) -> None:
  if np.issubdtype(array.dtype, np.floating):
    bad = sum(int(slab.size - np.count_nonzero(np.isfinite(slab))) for slab in _slabs(array))
    if bad:
      raise InputError(f"case {case.case_id}: {what} has {bad} NaN/inf voxel(s); expected finite "
                       "intensities")


def _real(array: np.ndarray) -> np.ndarray:
  """`array` as it is when its dtype is an integer or float32/float16, else float32."""
  if np.issubdtype(array.dtype, np.integer) or array.dtype in (np.float32, np.float16):
    return array
  return array.astype(np.float32)


def read_case(case: RawCase, dataset: RawDataset) -> LoadedCase:
  """Reads and checks one case of `dataset` (one case in memory at a time).

  Returns:
    `LoadedCase(image (*S, C), label uint8 (*S) | None, spacing, affine)`,
    the grid of the first channel; `label` is None for an unlabelled (test)
    case. The image keeps the file's integer or float32 dtype when one file
    holds every channel (e.g. int16 HU: half the memory of float32), else it
    is float32.

  Raises:
    InputError: one line starting with ``case <id>:`` (see the module docstring).
  """
  channels = dataset.channel_names
  image: Optional[np.ndarray] = None
  first: Optional[io.Volume] = None
  if dataset.four_d:
    first = _read(case, case.image_paths[0], "image", channels=True)
    if first.array.shape[-1] != len(channels):
      raise InputError(f"case {case.case_id}: image {_relative(case.image_paths[0])} has "
                       f"{first.array.shape[-1]} channel(s); dataset.json declares "
                       f"{len(channels)} {list(channels)}")
    for c, name in enumerate(channels):
      _check_finite(case, first.array[..., c], f"channel {c} ({name})")
    image = _real(first.array)
  else:
    for c, (path, name) in enumerate(zip(case.image_paths, channels)):
      what = f"channel {c} ({name})"
      volume = _read(case, path, what)
      _check_finite(case, volume.array, what)
      if first is None:
        first = volume
        if len(channels) == 1:  # the file's dtype (int16 HU: half a float32 copy's memory)
          image = _real(volume.array)[..., None]
          break
        image = np.empty(volume.array.shape + (len(channels),), np.float32)
      else:
        _same_grid(case, what, volume.array.shape, volume.spacing, volume.affine, first,
                   image.shape[:-1], "channel 0")
      image[..., c] = volume.array
      del volume
  assert image is not None and first is not None
  spatial = image.shape[:-1]
  label = None
  if case.label_path is not None:
    volume = _read(case, case.label_path, "label")
    _same_grid(case, "label", volume.array.shape, volume.spacing, volume.affine, first,
               spatial, "image")
    label = _checked_label(case, volume.array, dataset.labels)
  return LoadedCase(image, label, tuple(float(s) for s in first.spacing), first.affine)


def _checked_label(case: RawCase, array: np.ndarray, labels: dict[str, int]) -> np.ndarray:
  _check_finite(case, array, "label")
  if np.issubdtype(array.dtype, np.floating) and not all(
      np.array_equal(slab, np.round(slab)) for slab in _slabs(array)):
    raise InputError(f"case {case.case_id}: label has non-integer values; expected integer "
                     f"labels {sorted(labels.values())}")
  low, high = array.min(), array.max()
  if low >= 0 and high < 65536:  # counts per slab: faster than np.unique, no int64 copy
    counts = np.zeros(int(high) + 1, np.int64)
    for slab in _slabs(array):
      counts += np.bincount(slab.astype(np.intp, copy=False).ravel(), minlength=counts.size)
    values = np.flatnonzero(counts)
  else:
    values = np.unique(array)
  undeclared = sorted(int(v) for v in values if int(v) not in set(labels.values()))
  if undeclared:
    raise InputError(f"case {case.case_id}: label values {undeclared} not declared in "
                     f"dataset.json labels {labels}")
  return array.astype(np.uint8, copy=False)
