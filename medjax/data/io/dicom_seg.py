"""A label volume predicted on a DICOM series, written back as a DICOM Segmentation.

A DICOM Segmentation (SEG) object, DICOM PS3.3 A.51, is what a PACS viewer
overlays on the series it references: `write_segmentation` turns integer
labels `(D, H, W)` predicted on a series read with `medjax.data.io.read_image`
into a BINARY SEG with one segment per foreground class (label = the class
name), built with highdicom (Herrmann et al., "Highdicom: a Python library
for standardized encoding of image annotations and machine learning model
outputs in pathology and radiology", J. Digit. Imaging 2022). The SEG
references every source SOP instance, shares the series' Frame of Reference
and study, and its frames carry the source slices' positions.

Axis convention: `io.read_image` stacks the slices sorted along the slice
normal (`ImageOrientationPatient` row x column) as array axis 0, and keeps
each slice's `(Rows, Columns)` pixel matrix as axes 1, 2. `source_datasets`
sorts the files the same way, so `labels[d]` belongs to `source_datasets(...)[d]`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from medjax.errors import InputError

SEG_SERIES_NUMBER = 9901  # a series number viewers list after the usual source series numbers
MANUFACTURER = "medjax"


def _normal(dataset) -> np.ndarray:
  orientation = np.asarray(dataset.ImageOrientationPatient, np.float64)
  return np.cross(orientation[:3], orientation[3:])


def source_datasets(folder: str):
  """The slices of the DICOM series in `folder` (pixel data not loaded), in the
  order of `io.read_image`'s array axis 0: sorted by `ImagePositionPatient`
  projected on the slice normal.

  Raises:
    InputError naming a file that is not a readable DICOM slice.
  """
  import pydicom  # pylint: disable=g-import-not-at-top
  datasets = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if name.startswith(".") or name.upper() == "DICOMDIR" or not os.path.isfile(path):
      continue
    try:
      dataset = pydicom.dcmread(path, stop_before_pixels=True)
      float(np.dot(dataset.ImagePositionPatient, _normal(dataset)))
    except Exception as error:  # pydicom raises many types for bad files
      raise InputError(f"{path}: not a readable DICOM image slice ({error})".splitlines()[0]) from None
    datasets.append(dataset)
  if not datasets:
    raise InputError(f"{folder}: no DICOM files in the folder")
  normal = _normal(datasets[0])
  return sorted(datasets, key=lambda d: float(np.dot(d.ImagePositionPatient, normal)))


def segment_codes(class_name: str):
  """`(category, type)` codes (DICOM CID 7150 / SNOMED CT) for a class name.

  Lesions (tumour, tumor, lesion, ...) are a morphologically abnormal
  structure; a few organ names get their own code; anything else is
  "Tissue". The class name itself is the segment's label, which is what
  viewers show.
  """
  from pydicom.sr.codedict import codes  # pylint: disable=g-import-not-at-top
  name = class_name.lower()
  if any(word in name for word in ("tumour", "tumor", "neoplasm", "cancer")):
    return codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
  if "lesion" in name:
    return codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Lesion
  organs = {"liver": codes.SCT.Liver, "kidney": codes.SCT.Kidney, "spleen": codes.SCT.Spleen,
            "pancreas": codes.SCT.Pancreas, "organ": codes.SCT.Organ}
  for word, code in organs.items():
    if word in name:
      return codes.cid7150.AnatomicalStructure, code
  return codes.cid7150.Tissue, codes.SCT.Tissue


def build_segmentation(labels: np.ndarray, sources: Sequence, class_names: Sequence[str], *,
                       algorithm: str = MANUFACTURER, version: str = "0.1.0",
                       series_description: Optional[str] = None):
  """A BINARY `highdicom.seg.Segmentation` of integer `labels` `(D, H, W)` on
  the series `sources` (`source_datasets`' order: `labels[d]` is on `sources[d]`).

  Segment `k` (1-based, k = 1 .. K-1) is `labels == k`, labelled
  `class_names[k]`; class 0 is the background and gets no segment. Frames
  empty of every segment are omitted (highdicom's default); a prediction with
  no foreground at all still keeps its frames, so the object is valid.

  Raises:
    InputError: `labels` does not have one slice per source instance of the
      sources' `(Rows, Columns)`, or holds a label without a class name.
  """
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  from pydicom.sr.codedict import codes  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels)
  expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
  if labels.shape != expected:
    raise InputError(f"labels of shape {labels.shape} do not match the DICOM series "
                     f"({expected[0]} slices of {expected[1]}x{expected[2]}); expected {expected}")
  if labels.size and int(labels.max()) >= len(class_names):
    raise InputError(f"label {int(labels.max())} has no class name (class_names={tuple(class_names)})")
  foreground = range(1, len(class_names))
  masks = np.stack([labels == k for k in foreground], axis=-1)  # (D, H, W, K - 1)
  identification = hd.AlgorithmIdentificationSequence(
      name=algorithm, version=version, family=codes.cid7162.ArtificialIntelligence)
  descriptions = []
  for k in foreground:
    category, kind = segment_codes(class_names[k])
    descriptions.append(hd.seg.SegmentDescription(
        segment_number=k, segment_label=str(class_names[k])[:64],
        segmented_property_category=category, segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification))
  seg = hd.seg.Segmentation(
      source_images=list(sources), pixel_array=masks,
      segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
      segment_descriptions=descriptions, series_instance_uid=hd.UID(),
      series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
      manufacturer=MANUFACTURER, manufacturer_model_name=algorithm[:64],
      software_versions=version, device_serial_number="0",
      omit_empty_frames=bool(masks.any()))
  if series_description:
    seg.SeriesDescription = series_description[:64]
  return seg


def write_segmentation(path: str, labels: np.ndarray, series_folder: str,
                       class_names: Sequence[str], **kwargs) -> str:
  """Writes `build_segmentation(labels, source_datasets(series_folder), class_names)`
  to `path` (a DICOM Part 10 file) and returns `path`. `kwargs` go to
  `build_segmentation`. The caller makes the write atomic (`workdir.atomic_write`)."""
  seg = build_segmentation(labels, source_datasets(series_folder), class_names, **kwargs)
  seg.save_as(path, enforce_file_format=True)
  return path
