"""The raw layouts of detection datasets, read case by case into detection examples.

Three layouts (`LAYOUTS`), each a folder (`manual_dir`), never downloaded;
native spacing kept, the affine recorded:

* ``nndetection_raw``, nnDetection's raw layout (Baumgartner et al., MICCAI
  2021; nnDetection's README "Adding New Data sets" and
  `nndet/utils/check.py`): `manual_dir` is the task folder::

      dataset.json or dataset.yaml   {"labels": {"0": "nodule", ...}, "modalities": {"0": "CT"},
                                      "dim": 3, ...}   classes and modalities numbered from 0
      raw_splitted/imagesTr/{case}_{XXXX}.nii.gz     modality XXXX = 0000, 0001, ...
      raw_splitted/labelsTr/{case}.nii.gz            instance map: 0 background, 1..N lesions
      raw_splitted/labelsTr/{case}.json              {"instances": {"1": 0, "2": 1}}: class per id
      raw_splitted/imagesTs/, labelsTs/              optional; a labelled test set is the test split

  Instance ids in the map and the JSON must agree; they are renumbered 1..N
  in increasing order. Centres are the instances' box centres, diameters
  their equivalent-sphere diameters.

* ``luna16``, the LUNA16 challenge (Setio et al., Med. Image Anal. 2017)::

      subset0/ .. subset9/{seriesuid}.mhd + .raw   MetaImage CT (HU), any subsets present
      annotations.csv                 seriesuid,coordX,coordY,coordZ,diameter_mm (world mm, ITK/LPS)
      annotations_excluded.csv        optional (here or in evaluationScript/annotations/):
                                      irrelevant findings, same columns

  LUNA16 has no instance masks: each nodule's instance is the sphere of its
  annotated diameter around its annotated centre (as nnDetection's LUNA16
  preparation draws them), its voxels those whose centre lies within the
  radius (world mm), at least the voxel nearest the centre; where two
  spheres overlap the voxel goes to the nearer centre (in radii). Centres are
  converted from LPS to RAS (x, y negated) at this boundary; `centers_world`
  are the annotated centres, `diameters_mm` the annotated diameters. An
  excluded finding with a negative diameter (-1: a non-nodule) gets 10 mm,
  as the LUNA16 evaluation script (`noduleCADEvaluationLUNA16.py`) gives it.

* ``label_components``: an nnU-Net raw, Decathlon or LiTS folder
  (`medjax.data.builders.raw_layouts`) whose segmentation of one class (e.g.
  tumour) is cut into lesions: the connected components (full 26-neighbour
  connectivity by default) of that label value. Centres are the components'
  box centres, diameters their equivalent-sphere diameters.

Bad input is a one-line `InputError` starting with ``case <id>:`` and naming
the file: instance ids missing from the JSON (or JSON ids absent from the
map), a JSON class not in the dataset's labels, an annotation naming an
absent series, a centre outside the image, a non-positive diameter, a CSV
row with a wrong field count or a non-number.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from medjax.data import io
from medjax.data.builders import raw_layouts
from medjax.data.builders.detection_examples import array_axes_affine
from medjax.detection import boxes as box_ops
from medjax.errors import InputError

LAYOUTS = ("nndetection_raw", "luna16", "label_components")
LUNA16_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
LUNA16_UNSIZED_DIAMETER_MM = 10.0  # the evaluation script's size for a finding without one
# The grid check of the segmentation layouts (shape, spacing, affine within header rounding).
same_grid = raw_layouts._same_grid  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class DetectionCase:
  """One case of a detection folder: its files and (LUNA16) its annotations."""
  case_id: str
  image_paths: tuple[str, ...]
  label_path: Optional[str] = None
  info_path: Optional[str] = None  # nnDetection's per-case JSON
  nodules_lps: tuple[tuple[float, float, float, float], ...] = ()  # LUNA16 x, y, z, diameter
  excluded_lps: tuple[tuple[float, float, float, float], ...] = ()
  problems: tuple[str, ...] = ()  # found while scanning (a bad CSV row of this case)


@dataclasses.dataclass(frozen=True)
class DetectionFolder:
  """A scanned folder: class names, cases per split, problems outside any case."""
  layout: str
  class_names: tuple[str, ...]
  splits: dict[str, tuple[DetectionCase, ...]]
  orphans: tuple[tuple[str, str], ...] = ()  # (id, reason): e.g. annotations of absent series
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LoadedCase:
  """A read, checked case: `image` `(D, H, W, C)`, `instances` `(D, H, W)` (1..N), the rest as
  `detection_examples.make_example` takes it (`diameters_mm`, `centers_world` None: derived)."""
  image: np.ndarray
  instances: np.ndarray
  classes: tuple[int, ...]
  spacing: tuple[float, ...]
  affine: np.ndarray
  diameters_mm: Optional[np.ndarray] = None
  centers_world: Optional[np.ndarray] = None
  excluded_world: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4)))
  where: str = ""


def _relative(path: str) -> str:
  return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def _read_volume(case_id: str, path: str, what: str) -> io.Volume:
  if not os.path.exists(path):
    raise InputError(f"case {case_id}: {what} file {_relative(path)} is missing")
  try:
    volume = io.read_image(path)
  except InputError as error:
    raise InputError(f"case {case_id}: {what}: {error}") from None
  if volume.array.ndim != 3:
    raise InputError(f"case {case_id}: {what} {_relative(path)} is {volume.array.ndim}D; "
                     "expected a 3D volume")
  return volume


def _integer_map(case_id: str, array: np.ndarray, path: str) -> np.ndarray:
  """`array` as int64 if it holds non-negative integers, else a one-line error."""
  if np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
      raise InputError(f"case {case_id}: {_relative(path)} has non-integer values; expected an "
                       "instance map of integers")
  array = array.astype(np.int64)
  if array.size and array.min() < 0:
    raise InputError(f"case {case_id}: {_relative(path)} has negative values; expected 0 "
                     "(background) and positive instance ids")
  return array


# ------------------------------------------------------------- nnDetection ---

def _nndetection_info(manual_dir: str) -> tuple[str, dict[str, Any]]:
  for name in ("dataset.json", "dataset.yaml", "dataset.yml"):
    path = os.path.join(manual_dir, name)
    if not os.path.isfile(path):
      continue
    try:
      with open(path) as handle:
        if name.endswith(".json"):
          meta = json.load(handle)
        else:
          import yaml  # pylint: disable=g-import-not-at-top
          meta = yaml.safe_load(handle)
    except (OSError, ValueError) as error:
      raise InputError(f"{path}: not readable ({str(error).splitlines()[0]})") from None
    except Exception as error:  # yaml's own errors  # pylint: disable=broad-except
      raise InputError(f"{path}: not readable YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(meta, dict):
      raise InputError(f"{path}: expected an object with labels and modalities")
    return path, meta
  raise InputError(f"{manual_dir}: no dataset.json or dataset.yaml (the nnDetection task folder "
                   "holds it beside raw_splitted/)")


def _numbered_names(entry: Any, where: str, field: str) -> tuple[str, ...]:
  """{"0": name, "1": name} -> (name, name), keys 0..K-1."""
  try:
    by_number = {int(k): str(v) for k, v in dict(entry).items()}
  except (TypeError, ValueError):
    raise InputError(f"{where}: {field} must map numbers \"0\", \"1\", ... to names, got "
                     f"{entry!r}") from None
  if not by_number or sorted(by_number) != list(range(len(by_number))):
    raise InputError(f"{where}: {field} must be numbered 0..K-1, got {sorted(by_number)}")
  return tuple(by_number[k] for k in range(len(by_number)))


def scan_nndetection(manual_dir: str) -> DetectionFolder:
  """The cases of an nnDetection task folder (module docstring)."""
  where, meta = _nndetection_info(manual_dir)
  for field in ("labels", "modalities"):
    if field not in meta:
      raise InputError(f"{where}: missing field {field!r}")
  class_names = _numbered_names(meta["labels"], where, "labels")
  modalities = _numbered_names(meta["modalities"], where, "modalities")
  if int(meta.get("dim", 3)) != 3:
    raise InputError(f"{where}: dim={meta.get('dim')}; only 3D detection datasets are supported")
  root = os.path.join(manual_dir, "raw_splitted")
  if not os.path.isdir(root):
    raise InputError(f"{manual_dir}: no raw_splitted/ folder (expected raw_splitted/imagesTr and "
                     "raw_splitted/labelsTr)")
  ending = ".nii.gz"

  def cases(images: str, labels: str) -> tuple[DetectionCase, ...]:
    folder = os.path.join(root, images)
    ids = set()
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
      if name.startswith(".") or not name.endswith(ending):
        continue
      match = re.fullmatch(r"(.+)_(\d{4})", name[:-len(ending)])
      if not match:
        raise InputError(f"{os.path.join(folder, name)}: expected a name {{case}}_{{XXXX}}"
                         f"{ending} (XXXX: the 4-digit modality number)")
      if int(match.group(2)) >= len(modalities):
        raise InputError(f"{os.path.join(folder, name)}: modality {int(match.group(2))}, but "
                         f"{os.path.basename(where)} declares {len(modalities)} {list(modalities)}")
      ids.add(match.group(1))
    label_folder = os.path.join(root, labels)
    for name in sorted(os.listdir(label_folder)) if os.path.isdir(label_folder) else []:
      if name.endswith(ending) and not name.startswith("."):
        ids.add(name[:-len(ending)])
    return tuple(DetectionCase(
        case_id=case,
        image_paths=tuple(os.path.join(folder, f"{case}_{m:04d}{ending}")
                          for m in range(len(modalities))),
        label_path=os.path.join(label_folder, case + ending),
        info_path=os.path.join(label_folder, case + ".json")) for case in sorted(ids))

  splits = {"train": cases("imagesTr", "labelsTr")}
  if not splits["train"]:
    raise InputError(f"{root}: no training cases (expected imagesTr/{{case}}_0000{ending}, "
                     f"labelsTr/{{case}}{ending} and labelsTr/{{case}}.json)")
  if os.path.isdir(os.path.join(root, "labelsTs")):
    splits["test"] = cases("imagesTs", "labelsTs")
  return DetectionFolder("nndetection_raw", class_names, splits,
                         extra={"modalities": list(modalities), "dataset_file": where})


def _read_images(case: DetectionCase) -> tuple[np.ndarray, io.Volume]:
  """`(D, H, W, C)` float32 of every modality on one grid, and the first modality's volume."""
  first, channels = None, []
  for number, path in enumerate(case.image_paths):
    volume = _read_volume(case.case_id, path, f"modality {number}")
    if not np.all(np.isfinite(volume.array)):
      raise InputError(f"case {case.case_id}: {_relative(path)} has NaN/inf voxels; expected "
                       "finite intensities")
    if first is None:
      first = volume
    else:
      same_grid(case, f"modality {number}", volume.array.shape, volume.spacing, volume.affine,
                first, first.array.shape, "modality 0")
    channels.append(np.asarray(volume.array, np.float32))
  return np.stack(channels, axis=-1), first


def read_nndetection(case: DetectionCase, folder: DetectionFolder) -> LoadedCase:
  """Reads and checks one nnDetection case (module docstring)."""
  image, first = _read_images(case)
  label = _read_volume(case.case_id, case.label_path, "instance map")
  same_grid(case, "instance map", label.array.shape, label.spacing, label.affine, first,
            first.array.shape, "image")
  ids_map = _integer_map(case.case_id, label.array, case.label_path)
  info_name = _relative(case.info_path)
  if not os.path.isfile(case.info_path):
    raise InputError(f"case {case.case_id}: {info_name} is missing (the classes of the instances "
                     f"in {_relative(case.label_path)})")
  try:
    with open(case.info_path) as handle:
      info = json.load(handle)
  except (OSError, ValueError) as error:
    raise InputError(f"case {case.case_id}: {info_name} is not readable JSON "
                     f"({str(error).splitlines()[0]})") from None
  instances = info.get("instances") if isinstance(info, dict) else None
  if not isinstance(instances, dict):
    raise InputError(f"case {case.case_id}: {info_name} has no \"instances\" object "
                     "{\"1\": class, ...}")
  classes_by_id = {}
  for key, value in instances.items():
    try:
      number = int(key)
    except ValueError:
      number = 0
    if number < 1:
      raise InputError(f"case {case.case_id}: {info_name} instance id {key!r}; expected "
                       "positive integers")
    if (not isinstance(value, int) or isinstance(value, bool)
        or not 0 <= value < len(folder.class_names)):
      raise InputError(f"case {case.case_id}: {info_name} gives instance {key} the class "
                       f"{value!r}; expected one of 0..{len(folder.class_names) - 1} "
                       f"{list(folder.class_names)}")
    classes_by_id[number] = value
  present = set(np.unique(ids_map).tolist()) - {0}
  unnamed = sorted(present - set(classes_by_id))
  if unnamed:
    raise InputError(f"case {case.case_id}: instance ids {unnamed} in "
                     f"{_relative(case.label_path)} are missing from {info_name}")
  absent = sorted(set(classes_by_id) - present)
  if absent:
    raise InputError(f"case {case.case_id}: {info_name} names instance ids {absent} absent from "
                     f"{_relative(case.label_path)}")
  order = sorted(classes_by_id)
  lookup = np.zeros(max(order, default=0) + 1, np.int16)
  lookup[order] = np.arange(1, len(order) + 1)
  return LoadedCase(image=image, instances=lookup[ids_map], classes=tuple(
      classes_by_id[i] for i in order), spacing=tuple(first.spacing),
      affine=array_axes_affine(first.affine), where=_relative(case.label_path))


# ------------------------------------------------------------------ LUNA16 ---

def _luna16_csv(path: str, excluded: bool) -> tuple[dict[str, list], list[tuple[str, str]]]:
  """Rows of a LUNA16 CSV by series, and (series, problem) for each bad row."""
  rows: dict[str, list] = {}
  problems: list[tuple[str, str]] = []
  name = os.path.basename(path)
  try:
    with open(path, newline="") as handle:
      reader = csv.reader(handle)
      header = next(reader, None)
      if header is None or tuple(h.strip() for h in header) != LUNA16_COLUMNS:
        raise InputError(f"{path}: header {header}; expected {','.join(LUNA16_COLUMNS)}")
      for line, row in enumerate(reader, start=2):
        if not row or not any(field.strip() for field in row):
          continue
        series = row[0].strip()
        if len(row) != len(LUNA16_COLUMNS):
          problems.append((series, f"case {series}: {name} line {line} has {len(row)} fields; "
                                   f"expected {len(LUNA16_COLUMNS)} ({','.join(LUNA16_COLUMNS)})"))
          continue
        try:
          x, y, z, diameter = (float(v) for v in row[1:])
        except ValueError:
          problems.append((series, f"case {series}: {name} line {line}: coordX, coordY, coordZ, "
                                   f"diameter_mm must be numbers, got {row[1:]}"))
          continue
        if not all(math.isfinite(v) for v in (x, y, z, diameter)):
          problems.append((series, f"case {series}: {name} line {line}: non-finite value"))
          continue
        if excluded and diameter < 0:
          diameter = LUNA16_UNSIZED_DIAMETER_MM
        if diameter <= 0:
          problems.append((series, f"case {series}: {name} line {line}: diameter_mm {diameter:g}; "
                                   "expected a positive diameter"))
          continue
        rows.setdefault(series, []).append((x, y, z, diameter))
  except OSError as error:
    raise InputError(f"{path}: cannot read ({error})") from None
  return rows, problems


def scan_luna16(manual_dir: str) -> DetectionFolder:
  """The series of a LUNA16 folder with their annotations (module docstring)."""
  series: dict[str, str] = {}
  subsets: dict[str, int] = {}
  for entry in sorted(os.listdir(manual_dir)):
    match = re.fullmatch(r"subset(\d+)", entry)
    folder = os.path.join(manual_dir, entry)
    if not match or not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      if name.startswith(".") or not name.endswith(".mhd"):
        continue
      uid = name[:-len(".mhd")]
      if uid in series:
        raise InputError(f"{os.path.join(folder, name)}: series {uid} is also in "
                         f"{_relative(series[uid])}")
      series[uid], subsets[uid] = os.path.join(folder, name), int(match.group(1))
  if not series:
    raise InputError(f"{manual_dir}: no subset*/{{seriesuid}}.mhd files (the LUNA16 layout)")
  annotations = next((p for p in (os.path.join(manual_dir, "annotations.csv"),
                                  os.path.join(manual_dir, "CSVFILES", "annotations.csv"))
                      if os.path.isfile(p)), None)
  if annotations is None:
    raise InputError(f"{manual_dir}: no annotations.csv (seriesuid,coordX,coordY,coordZ,"
                     "diameter_mm)")
  nodules, problems = _luna16_csv(annotations, excluded=False)
  excluded_path = next((p for p in (
      os.path.join(manual_dir, "annotations_excluded.csv"),
      os.path.join(manual_dir, "evaluationScript", "annotations", "annotations_excluded.csv"))
                        if os.path.isfile(p)), None)
  excluded, more = _luna16_csv(excluded_path, excluded=True) if excluded_path else ({}, [])
  problems += more
  orphans = []
  for table, path in ((nodules, annotations), (excluded, excluded_path)):
    for uid in sorted(set(table) - set(series)):
      orphans.append((uid, f"case {uid}: {os.path.basename(path)} names series {uid}, which has "
                           f"no subset*/{uid}.mhd in the folder"))
  by_case: dict[str, list[str]] = {}
  for uid, problem in problems:
    if uid in series:
      by_case.setdefault(uid, []).append(problem)
    else:
      orphans.append((uid or "?", problem))
  cases = tuple(DetectionCase(
      case_id=uid, image_paths=(series[uid],), nodules_lps=tuple(nodules.get(uid, ())),
      excluded_lps=tuple(excluded.get(uid, ())), problems=tuple(by_case.get(uid, ())))
      for uid in sorted(series))
  return DetectionFolder("luna16", ("nodule",), {"train": cases}, tuple(orphans),
                         extra={"subsets": subsets, "annotations": annotations,
                                "annotations_excluded": excluded_path})


def _lps_to_ras(points: np.ndarray) -> np.ndarray:
  return np.asarray(points, np.float64) * np.array([-1.0, -1.0, 1.0])


def _spheres(shape: Sequence[int], affine: np.ndarray, centres_world: np.ndarray,
             diameters: np.ndarray) -> np.ndarray:
  """Instance map of spheres (world mm) on the grid; overlaps go to the nearer centre (in radii)."""
  instances = np.zeros(tuple(shape), np.int16)
  nearest = np.full(tuple(shape), np.inf, np.float32)
  columns = np.linalg.norm(affine[:3, :3], axis=0)  # mm per array axis
  for number, (centre, diameter) in enumerate(zip(centres_world, diameters), start=1):
    radius = diameter / 2
    index = box_ops.world_to_voxel(np.reshape(centre, (-1, 3)), affine)[0]
    reach = np.ceil(radius / columns) + 1
    box = tuple(slice(int(max(np.floor(i - r), 0)), int(min(np.ceil(i + r) + 1, n)))
                for i, r, n in zip(index, reach, shape))
    grid = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), -1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    distance = (np.linalg.norm(world - centre, axis=-1) / radius).astype(np.float32)
    centre_voxel = tuple(int(np.clip(round(i), 0, n - 1)) - b.start
                         for i, n, b in zip(index, shape, box))
    distance[centre_voxel] = 0.0  # at least the voxel nearest the centre
    take = (distance <= 1.0) & (distance < nearest[box])
    instances[box][take] = number
    nearest[box][take] = distance[take]
  return instances


def read_luna16(case: DetectionCase, folder: DetectionFolder) -> LoadedCase:
  """Reads one LUNA16 series and draws its nodules as spheres (module docstring)."""
  del folder
  if case.problems:
    raise InputError(case.problems[0])
  volume = _read_volume(case.case_id, case.image_paths[0], "image")
  affine = array_axes_affine(volume.affine)
  shape = volume.array.shape
  where = _relative(case.image_paths[0])

  def inside(rows: Sequence[tuple], what: str) -> np.ndarray:
    rows = np.asarray(rows, np.float64).reshape(-1, 4)
    ras = _lps_to_ras(rows[:, :3])
    voxels = box_ops.world_to_voxel(np.reshape(ras, (-1, 3)), affine)
    for (x, y, z, _), voxel in zip(rows, voxels):
      if np.any(voxel < -0.5) or np.any(voxel > np.asarray(shape) - 0.5):
        raise InputError(f"case {case.case_id}: {what} at ({x:g}, {y:g}, {z:g}) mm (LPS) lies "
                         f"outside the image {where} (voxel {np.round(voxel, 1).tolist()}, shape "
                         f"{list(shape)})")
    return np.concatenate([ras, rows[:, 3:]], axis=1)

  nodules = inside(case.nodules_lps, "annotations.csv nodule")
  excluded = inside(case.excluded_lps, "annotations_excluded.csv finding")
  instances = _spheres(shape, affine, nodules[:, :3], nodules[:, 3])
  image = np.asarray(volume.array, np.float32)[..., None]
  if not np.all(np.isfinite(image)):
    raise InputError(f"case {case.case_id}: {where} has NaN/inf voxels")
  return LoadedCase(image=image, instances=instances, classes=(0,) * len(nodules),
                    spacing=tuple(volume.spacing), affine=affine, diameters_mm=nodules[:, 3],
                    centers_world=nodules[:, :3], excluded_world=excluded, where=where)


# -------------------------------------------------- segmentation components ---

def scan_components(layout: str, manual_dir: str, label: str) -> DetectionFolder:
  """The cases of an nnU-Net raw / Decathlon / LiTS folder, lesions from the class `label`.

  `label`: a class name or value of the dataset's labels; empty picks the only
  foreground class of a binary segmentation.
  """
  dataset = raw_layouts.scan(layout, manual_dir)
  foreground = {name: value for name, value in dataset.labels.items() if value != 0}
  if str(label) == "":
    if len(foreground) != 1:
      raise InputError(f"dataset_kwargs.label: {manual_dir} has {len(foreground)} foreground "
                       f"classes {foreground}; choose the lesion class by name or value")
    name, value = next(iter(foreground.items()))
  elif str(label) in foreground:
    name, value = str(label), foreground[str(label)]
  elif str(label).isdigit() and int(label) in foreground.values():
    value = int(label)
    name = next(n for n, v in foreground.items() if v == value)
  else:
    raise InputError(f"dataset_kwargs.label={label!r}: expected one of the foreground classes "
                     f"{foreground} (name or value)")
  splits = {"train": dataset.training}
  if dataset.test_labelled and dataset.test:
    splits["test"] = dataset.test
  as_cases = {split: tuple(DetectionCase(c.case_id, c.image_paths, c.label_path) for c in cases)
              for split, cases in splits.items()}
  return DetectionFolder("label_components", (name,), as_cases,
                         extra={"source_layout": layout, "label_value": int(value),
                                "dataset": dataset})


def read_components(case: DetectionCase, folder: DetectionFolder,
                    connectivity: int = 3) -> LoadedCase:
  """Reads one segmentation case; its lesions are the connected components of the chosen label."""
  dataset = folder.extra["dataset"]
  loaded = raw_layouts.read_case(
      raw_layouts.RawCase(case.case_id, case.image_paths, case.label_path), dataset)
  if loaded.image.ndim != 4:
    raise InputError(f"case {case.case_id}: a {loaded.image.ndim - 1}D image; detection needs 3D")
  if loaded.label is None:
    raise InputError(f"case {case.case_id}: no label file")
  structure = ndimage.generate_binary_structure(3, connectivity)
  instances, count = ndimage.label(loaded.label == folder.extra["label_value"], structure)
  return LoadedCase(image=np.asarray(loaded.image, np.float32),
                    instances=instances.astype(np.int16), classes=(0,) * count,
                    spacing=tuple(loaded.spacing), affine=array_axes_affine(loaded.affine),
                    where=_relative(case.label_path) if case.label_path else "")
