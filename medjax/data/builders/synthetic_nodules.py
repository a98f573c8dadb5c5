"""TFDS builder `synthetic_nodules`: lung-nodule detection on `medjax.data.phantoms.chest_ct`.

Each example is one synthetic chest CT in the detection example format of
`medjax.data.builders.detection_examples` (image in HU, instance map, padded
voxel boxes, class 0 = "nodule", annotated diameters, world centres, the
nodules below 3 mm as excluded findings, spacing, array-axis affine).
Generated locally and deterministically, written as `array_record` (no
TensorFlow, nothing downloaded)::

  datasets.load_source("synthetic_nodules", "train", data_dir)

Configs:

* ``default``: volumes `(64, 96, 96)` at `(2.0, 1.5, 1.5)` mm; splits train 96,
  validation 24, test 48 (about 32 % of the cases without a nodule, 2 nodules
  on average in the others, as LUNA16);
* ``smoke``: volumes `(32, 64, 64)` at the same spacing (a smaller chest:
  nodules too large for its lungs are redrawn smaller); splits train 4,
  validation 2, test 2 -- for tests and `:smoke` configs.

Every split draws its cases from its own range of generator seeds
(`SEED_OFFSETS`), so splits share no case and a build is reproducible bit
for bit. Sizes are config fields (`dataset_kwargs.shape`,
`dataset_kwargs.split_sizes`, `max_boxes`, `max_excluded`, `seed`).

Metadata: `class_names` (["nodule"]), `spacing`, `shape`, `max_boxes`,
`max_excluded`, `cases` (the case ids of each split in storage order).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from medjax.data.builders import detection_examples, shard_writing
from medjax.data.phantoms import chest_ct

SEED_OFFSETS = {"train": 0, "validation": 100_000, "test": 200_000}


@dataclasses.dataclass(eq=False)
class SyntheticNodulesConfig(tfds.core.BuilderConfig):
  """Geometry, split sizes and padding of one `synthetic_nodules` variant."""
  shape: tuple[int, ...] = (64, 96, 96)
  spacing: tuple[float, ...] = (2.0, 1.5, 1.5)
  split_sizes: tuple[tuple[str, int], ...] = (("train", 96), ("validation", 24), ("test", 48))
  seed: int = 0  # added to every case seed: another seed gives another dataset
  max_boxes: int = detection_examples.MAX_BOXES
  max_excluded: int = detection_examples.MAX_EXCLUDED

  def __post_init__(self):
    self.shape = tuple(int(n) for n in self.shape)
    self.spacing = tuple(float(v) for v in self.spacing)
    sizes = self.split_sizes.items() if isinstance(self.split_sizes, dict) else self.split_sizes
    self.split_sizes = tuple((str(k), int(v)) for k, v in sizes)
    self.seed, self.max_boxes, self.max_excluded = (int(self.seed), int(self.max_boxes),
                                                    int(self.max_excluded))
    if len(self.shape) != 3 or len(self.spacing) != 3 or min(self.shape) < 16:
      raise ValueError(f"config {self.name}: shape {self.shape} and spacing {self.spacing} must "
                       "have 3 entries, at least 16 voxels per axis")
    if min(self.spacing) <= 0:
      raise ValueError(f"config {self.name}: spacing {self.spacing} must be positive")
    unknown = [k for k, _ in self.split_sizes if k not in SEED_OFFSETS]
    if unknown:
      raise ValueError(f"config {self.name}: unknown splits {unknown}; expected "
                       f"{list(SEED_OFFSETS)}")
    if any(not 0 <= v <= 100_000 for _, v in self.split_sizes):
      raise ValueError(f"config {self.name}: split sizes {dict(self.split_sizes)} must be "
                       "0..100000")
    if self.max_boxes < chest_ct.MAX_NODULES:
      raise ValueError(f"config {self.name}: max_boxes={self.max_boxes}; the phantom draws up to "
                       f"{chest_ct.MAX_NODULES} nodules per case")
    if self.max_excluded < chest_ct.MAX_SMALL_NODULES:
      raise ValueError(f"config {self.name}: max_excluded={self.max_excluded}; the phantom draws "
                       f"up to {chest_ct.MAX_SMALL_NODULES} small nodules per case")


class SyntheticNodules(tfds.core.ShardBasedBuilder):
  """Synthetic chest CT with solid and ground-glass lung nodules among branching vessels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticNodulesConfig(
          name="default", description="Chest CT (64, 96, 96) at (2.0, 1.5, 1.5) mm.",
          shape=(64, 96, 96), spacing=(2.0, 1.5, 1.5),
          split_sizes=(("train", 96), ("validation", 24), ("test", 48))),
      SyntheticNodulesConfig(
          name="smoke", description="Small chest CT (32, 64, 64) at (2.0, 1.5, 1.5) mm, 8 cases.",
          shape=(32, 64, 64), spacing=(2.0, 1.5, 1.5),
          split_sizes=(("train", 4), ("validation", 2), ("test", 2))),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=detection_examples.features(config.max_boxes, config.max_excluded, channels=1),
        homepage="https://github.com/medjax/medjax",
        disable_shuffling=True,  # stored in case order (`cases` in the metadata)
        metadata=tfds.core.MetadataDict(
            class_names=list(chest_ct.CLASS_NAMES), spacing=list(config.spacing),
            shape=list(config.shape), max_boxes=config.max_boxes,
            max_excluded=config.max_excluded,
            cases={split: [case_id(split, i) for i in range(size)]
                   for split, size in config.split_sizes}))

  def _shard_iterators_per_split(self, dl_manager: tfds.download.DownloadManager
                                 ) -> dict[str, list[Any]]:
    del dl_manager  # generated locally, nothing to download
    return {split: shard_writing.one_shard(functools.partial(self._generate_examples, split, size))
            for split, size in self.builder_config.split_sizes}

  def _generate_examples(self, split: str, size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    config = self.builder_config
    for index in range(size):
      yield index, example(config.seed + SEED_OFFSETS[split] + index, case_id(split, index),
                           config.shape, config.spacing, max_boxes=config.max_boxes,
                           max_excluded=config.max_excluded)


def case_id(split: str, index: int) -> str:
  """The id of case `index` of `split`: ``"<split>_<index>"``."""
  return f"{split}_{index:05d}"


def example(seed: int, case: str, shape: Sequence[int] = (64, 96, 96),
            spacing: Sequence[float] = (2.0, 1.5, 1.5), *, max_boxes: int = detection_examples.MAX_BOXES,
            max_excluded: int = detection_examples.MAX_EXCLUDED) -> dict[str, Any]:
  """The detection example of phantom case `seed`: diameters as drawn, centres of the boxes.

  The world centre of a nodule is the centre of its instance's box (what is
  visible; a juxtapleural nodule is cut by the lung border); its diameter the
  one it was drawn with, as an annotated diameter. Small nodules (< 3 mm)
  are the excluded findings, at their drawn centres.
  """
  drawn = chest_ct.make_case(seed, shape, spacing)
  excluded = [np.r_[(drawn.affine @ np.r_[centre, 1.0])[:3], diameter]
              for centre, diameter in drawn.small_nodules]
  return detection_examples.make_example(
      case, drawn.image, drawn.instances, [0] * len(drawn.nodules), drawn.spacing, drawn.affine,
      diameters_mm=[n.diameter_mm for n in drawn.nodules], excluded_world=excluded,
      max_boxes=max_boxes, max_excluded=max_excluded)
