"""Datasets, input pipelines and medical image I/O, grouped by job as nnU-Net groups them.

* `io`: image files in and out (`read_image`, `write_nifti`, DICOM SEG).
* `builders`: TFDS builders (synthetic, nnU-Net raw / Decathlon / LiTS folders,
  MedMNIST) and `builders.datasets.load_source`, which prepares them once.
* `phantoms`: the deterministic synthetic CT the built-in datasets are made of.
* `preprocessing`: fingerprint, plan, resampling, normalisation, and a plan
  applied to one case (and inverted).
* `pipeline`: grain loaders, patch sampling, the case cache, on-device
  augmentation, small transforms.

A new dataset is a TFDS builder module in `builders/` (registered on import by
`builders.datasets`), reading local files from `manual_dir`.

Subpackages are imported on first attribute access, so `import medjax.data`
stays cheap (TFDS and grain load only when used).
"""
import importlib
from typing import Any

_SUBPACKAGES = ("builders", "io", "phantoms", "pipeline", "preprocessing")


def __getattr__(name: str) -> Any:
  if name in _SUBPACKAGES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
