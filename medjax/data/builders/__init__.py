"""Datasets as TFDS builders (array_record, no TensorFlow, nothing downloaded).

* `datasets`: `prepare` / `load_source(name, split, data_dir)`: prepares a dataset
  once under a lock and opens a split as a random-access source; importing it
  registers every builder below.
* `synthetic_organs`: `synthetic_organs/{3d,2d,patches2d,patches3d}`, generated
  locally from `medjax.data.phantoms`.
* `folder_datasets`: `nnunet_raw`, `decathlon`, `lits`: a local folder, planned and
  preprocessed once per `manual_dir` (`prepared_metadata`).
* `medmnist`: `medmnist/<flag>` from the MedMNIST v2 `.npz` files.
* `kits19`: the KiTS19 folder with the MLPerf 3D U-Net preprocessing and its fixed
  42-case validation split.
* `synthetic_nodules`: `synthetic_nodules/{default,smoke}`, lung-nodule detection
  on `medjax.data.phantoms.chest_ct`.
* `detection_folders`: `nndetection_raw`, `luna16`, `label_components`: a local
  folder as detection data (`detection_layouts` reads the layouts,
  `detection_examples` is the example format every detection builder writes).
* `raw_layouts`: reads a real dataset's folder (nnU-Net v2 raw, Decathlon, LiTS)
  case by case, with one-line errors per bad case.
* `splits`: `kfold`, nnU-Net's deterministic 5-fold cross-validation.
* `shard_writing`: a split written straight to its array_record shard.
"""
import importlib
from typing import Any

_MODULES = ("datasets", "detection_examples", "detection_folders", "detection_layouts",
            "folder_datasets", "kits19", "medmnist", "raw_layouts", "shard_writing", "splits",
            "synthetic_nodules", "synthetic_organs")


def __getattr__(name: str) -> Any:
  """Modules load on first attribute access (`data.builders.datasets`): TFDS only when used."""
  if name in _MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
