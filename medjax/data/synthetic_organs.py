"""TFDS builder `synthetic_organs`: the synthetic CT of `medjax.data.synthetic`.

Two configs, both written as `array_record` (read back with
`tfds.data_source` / `builder.as_data_source()`, no TensorFlow needed):

* ``3d``: volumes `(64, 96, 96)` at `(2.5, 0.8, 0.8)` mm, labels 0/1/2
  (background/organ/tumour); splits train 24, validation 4, test 8.
* ``2d``: slices `(128, 128)` at `(0.8, 0.8)` mm with a per-image `lesion`
  label (about half contain a tumour); splits train 400, validation 50,
  test 100.

Each split draws its cases from its own fixed, disjoint range of generator
seeds (`SEED_OFFSETS`), so a build is bit-for-bit reproducible and no case is
shared between splits. Sizes and shapes are config fields: tests build a tiny
variant with `SyntheticOrgansConfig(name="3d_tiny", ndim=3, shape=(16, 24, 24),
split_sizes=(("train", 3), ("validation", 1), ("test", 2)))`.

Features: `image` float32 `(*shape)` in HU, `label` uint8 `(*shape)`,
`spacing` float32 `(ndim,)` in mm, `case` text id (``"<split>_<index>"``);
``2d`` adds `lesion` (ClassLabel: no/yes).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from medjax.data import synthetic

# Disjoint seed ranges per split: a split of up to 100000 cases never reaches
# the next range.
SEED_OFFSETS = {"train": 0, "validation": 100_000, "test": 200_000}


@dataclasses.dataclass(eq=False)
class SyntheticOrgansConfig(tfds.core.BuilderConfig):
  """Geometry and split sizes of one `synthetic_organs` variant."""
  ndim: int = 3
  shape: tuple[int, ...] = (64, 96, 96)
  spacing: tuple[float, ...] = (2.5, 0.8, 0.8)
  split_sizes: tuple[tuple[str, int], ...] = (("train", 24), ("validation", 4), ("test", 8))
  seed: int = 0  # added to every case seed: another seed gives another dataset

  def __post_init__(self):
    # Accept what config files and flags produce (lists, dicts).
    self.shape = tuple(int(n) for n in self.shape)
    self.spacing = tuple(float(v) for v in self.spacing)
    sizes = self.split_sizes.items() if isinstance(self.split_sizes, dict) else self.split_sizes
    self.split_sizes = tuple((str(k), int(v)) for k, v in sizes)
    if len(self.shape) != self.ndim or len(self.spacing) != self.ndim:
      raise ValueError(f"config {self.name}: shape {self.shape} and spacing {self.spacing} "
                       f"must have ndim={self.ndim} entries")
    unknown = [k for k, _ in self.split_sizes if k not in SEED_OFFSETS]
    if unknown:
      raise ValueError(f"config {self.name}: unknown splits {unknown}; expected {list(SEED_OFFSETS)}")


class SyntheticOrgans(tfds.core.GeneratorBasedBuilder):
  """Synthetic CT with a deformed organ and small hypodense tumours."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticOrgansConfig(
          name="3d", description="3D volumes (64, 96, 96) at (2.5, 0.8, 0.8) mm.",
          ndim=3, shape=(64, 96, 96), spacing=(2.5, 0.8, 0.8),
          split_sizes=(("train", 24), ("validation", 4), ("test", 8))),
      SyntheticOrgansConfig(
          name="2d", description="2D slices (128, 128) at (0.8, 0.8) mm, lesion label.",
          ndim=2, shape=(128, 128), spacing=(0.8, 0.8),
          split_sizes=(("train", 400), ("validation", 50), ("test", 100))),
  ]
  DEFAULT_CONFIG_NAME = "3d"

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    # array_record is the only format readable without TensorFlow.
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    ndim = config.ndim
    features = {
        "image": tfds.features.Tensor(shape=(None,) * ndim, dtype=np.float32, encoding="zlib"),
        "label": tfds.features.Tensor(shape=(None,) * ndim, dtype=np.uint8, encoding="zlib"),
        "spacing": tfds.features.Tensor(shape=(ndim,), dtype=np.float32),
        "case": tfds.features.Text(),
    }
    if ndim == 2:
      features["lesion"] = tfds.features.ClassLabel(names=["no", "yes"])
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage="https://github.com/medjax/medjax",
        metadata=tfds.core.MetadataDict(class_names=list(synthetic.CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    del dl_manager  # generated locally, nothing to download
    return {split: self._generate_examples(split, size)
            for split, size in self.builder_config.split_sizes}

  def _generate_examples(self, split: str, size: int) -> Iterator[tuple[str, dict[str, Any]]]:
    config = self.builder_config
    if size > 100_000:
      raise ValueError(f"split {split}: at most 100000 cases, got {size}")
    spacing = np.asarray(config.spacing, np.float32)
    for index in range(size):
      seed = config.seed + SEED_OFFSETS[split] + index
      case = f"{split}_{index:05d}"
      if config.ndim == 3:
        image, label = synthetic.make_volume(seed, config.shape, config.spacing)
        yield case, {"image": image, "label": label, "spacing": spacing, "case": case}
      else:
        image, label, lesion = synthetic.make_slice(seed, config.shape, config.spacing)
        yield case, {"image": image, "label": label, "spacing": spacing, "case": case,
                     "lesion": lesion}
