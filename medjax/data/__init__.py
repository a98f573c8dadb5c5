"""Datasets, input pipelines and medical image I/O.

Modules (each with one job):

* `synthetic`: deterministic synthetic CT (organ + small hypodense tumours).
* `synthetic_patches`: background / organ / tumour patches cut from it (patch classification).
* `synthetic_organs`: TFDS builder `synthetic_organs/{3d,2d,patches2d,patches3d}` (array_record).
* `raw_layouts`: reads a real dataset's folder (nnU-Net v2 raw, Medical
  Segmentation Decathlon, LiTS) case by case, with one-line errors per bad case.
* `folder_datasets`: TFDS builders `nnunet_raw`, `decathlon`, `lits` (planned and
  preprocessed once per `manual_dir`; `prepared_metadata`).
* `medmnist`: TFDS builder `medmnist/<flag>` (MedMNIST v2 `.npz`, 2D and 3D, every size).
* `splits`: `kfold`, nnU-Net's deterministic 5-fold cross-validation.
* `shard_writing`: writes a split straight to its array_record shard (no 1 GB
  in-memory buffer, no TensorFlow), for the builders of real data.
* `fingerprint`, `planning`: nnU-Net dataset fingerprint and plan (target
  spacing, patch size, pooling, normalisation per channel).
* `resampling`, `normalization`, `preprocessing`: `preprocess_case` (crop ->
  normalise -> resample under a plan) and its inverse `to_native`.
* `datasets`: `load_source(name, split, data_dir)`, prepares once under a lock.
* `transforms`: `normalize_ct`, `random_flip`, `check_image`, `check_labels`.
* `augment`: nnU-Net's augmentation in JAX, run on the device inside the training step.
* `patches`: nnU-Net foreground-oversampled patch sampling.
* `crop`: organ bounding boxes and `OrganCropSource` (a cascade's stage-2 cases).
* `case_cache`: training cases decoded on demand from a source, a few kept
  (LRU), so a dataset larger than RAM trains.
* `pipeline`: resumable, multi-host grain pipelines (`train_batches`,
  `eval_cases`, `classification_batches`, `classification_images`).
* `io`: `read_image` (NIfTI, NRRD, MetaImage, DICOM folder), `read_image_channels`
  (4D NIfTI channels-last), `write_nifti`.
* `dicom_seg`: `write_segmentation`, labels predicted on a DICOM series as a DICOM
  Segmentation referencing it (highdicom), for PACS viewers.

A new dataset is a TFDS builder module here (registered on import by
`datasets`), reading local files from `manual_dir`.

Submodules are imported on first attribute access, so `import medjax.data`
stays cheap (TFDS and grain load only when used).
"""
import importlib
from typing import Any

_SUBMODULES = ("augment", "case_cache", "crop", "datasets", "dicom_seg", "fingerprint",
               "folder_datasets", "io", "medmnist", "normalization", "patches", "pipeline",
               "planning", "preprocessing",
               "raw_layouts", "resampling", "shard_writing", "splits", "synthetic",
               "synthetic_organs", "synthetic_patches", "transforms")


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
