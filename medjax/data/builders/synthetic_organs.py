"""TFDS builder `synthetic_organs`: the synthetic CT of `medjax.data.phantoms.organ_ct`.

Patch classification (the learnable classification task; how to use it):
``synthetic_organs/patches2d`` holds 32x32 patches (0.8 mm) cut from
synthetic slices, ``synthetic_organs/patches3d`` 16x32x32 patches
(2.5, 0.8, 0.8 mm) cut from synthetic volumes, each centred on a background,
an organ-only or a tumour voxel, with the integer class in `label` (0
background, 1 organ, 2 tumour; balanced: train 3000 / validation 500 / test
1000, i.e. 1000/1000/1000 in train) -- definitions in
`medjax.data.phantoms.organ_patches`. Open a split with
``medjax.data.builders.datasets.load_source("synthetic_organs/patches2d", "train",
data_dir)`` (generated on first use: 9-17 s in 2D, 16 MB; 34-65 s in 3D,
260 MB, on a loaded 2-core CPU machine); in a config
start from `experiments.configs.common.patch_classification_2d()`
(`config.label_key = "label"`, a fixed HU window instead of per-image
z-scoring); shrink it for tests with ``dataset_kwargs`` overrides such as
``split_sizes={"train": 12, "validation": 3, "test": 6}`` (and
``shape=(48, 48), patch_size=(16, 16)``). Images are raw HU float32 `(*P)`;
`mask` is the label map of the patch; `source` is the id of the image the
patch was cut from (the `case` of ``2d``/``3d`` at that index when the shapes
agree: splits share no source image). Measured baselines (test accuracy,
1000 steps): `mlp_synthetic2d.py:patches` 0.900, `convnet_synthetic2d.py:patches`
(LeNet) 0.917, `:vgg,patches` 0.958, `resnet_patches2d.py` 0.958.

Configs, all written as `array_record` (read back with
`tfds.data_source` / `builder.as_data_source()`, no TensorFlow needed):

* ``3d``: volumes `(64, 96, 96)` at `(2.5, 0.8, 0.8)` mm, labels 0/1/2
  (background/organ/tumour); splits train 24, validation 4, test 8.
* ``2d``: slices `(128, 128)` at `(0.8, 0.8)` mm with a per-image `lesion`
  label (about half contain a tumour); splits train 400, validation 50,
  test 100.
* ``patches2d``: patches `(32, 32)` from `(128, 128)` slices with a tumour,
  2 patches of each class per slice; splits train 3000, validation 500,
  test 1000 (balanced over the three classes).
* ``patches3d``: patches `(16, 32, 32)` from `(64, 96, 96)` volumes, 8 of
  each class per volume; same split sizes.

Each split draws its images from its own fixed, disjoint range of generator
seeds (`SEED_OFFSETS`), so a build is bit-for-bit reproducible and no image is
shared between splits. Sizes and shapes are config fields: tests build a tiny
variant with `SyntheticOrgansConfig(name="3d_tiny", ndim=3, shape=(16, 24, 24),
split_sizes=(("train", 3), ("validation", 1), ("test", 2)))`.

Features: `image` float32 `(*shape)` in HU, `label` uint8 `(*shape)`,
`spacing` float32 `(ndim,)` in mm, `case` text id (``"<split>_<index>"``);
``2d`` adds `lesion` (ClassLabel: no/yes). Patch configs: `image` float32
`(*patch_size)` in HU, `label` ClassLabel (background/organ/tumour), `mask`
uint8 `(*patch_size)`, `spacing`, `case` (``"<split>_<patch index>"``),
`source` (``"<split>_<image index>"``), `centre` int32 `(ndim,)` (the
patch centre's voxel in the source image).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from medjax.data.phantoms import organ_ct, organ_patches

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
  # Patch configs only (empty patch_size: whole images): patch shape, patches
  # of each class per source image, and how far from the organ background
  # centres may lie (`medjax.data.phantoms.organ_patches`).
  patch_size: tuple[int, ...] = ()
  patches_per_image: int = 2
  background_band_mm: float = 20.0

  def __post_init__(self):
    # Accept what config files and flags produce (lists, dicts).
    self.shape = tuple(int(n) for n in self.shape)
    self.spacing = tuple(float(v) for v in self.spacing)
    sizes = self.split_sizes.items() if isinstance(self.split_sizes, dict) else self.split_sizes
    self.split_sizes = tuple((str(k), int(v)) for k, v in sizes)
    self.patch_size = tuple(int(n) for n in self.patch_size)
    self.patches_per_image = int(self.patches_per_image)
    self.background_band_mm = float(self.background_band_mm)
    if len(self.shape) != self.ndim or len(self.spacing) != self.ndim:
      raise ValueError(f"config {self.name}: shape {self.shape} and spacing {self.spacing} "
                       f"must have ndim={self.ndim} entries")
    unknown = [k for k, _ in self.split_sizes if k not in SEED_OFFSETS]
    if unknown:
      raise ValueError(f"config {self.name}: unknown splits {unknown}; expected {list(SEED_OFFSETS)}")
    if self.patch_size:
      if len(self.patch_size) != self.ndim or any(
          not 0 < p <= n for p, n in zip(self.patch_size, self.shape)):
        raise ValueError(f"config {self.name}: patch_size {self.patch_size} must have "
                         f"ndim={self.ndim} entries, each in [1, shape {self.shape}]")
      if self.patches_per_image < 1:
        raise ValueError(f"config {self.name}: patches_per_image={self.patches_per_image}; "
                         "expected >= 1")


class SyntheticOrgans(tfds.core.GeneratorBasedBuilder):
  """Synthetic CT with a deformed organ and small hypodense tumours."""

  # One version for every config: a config's examples do not depend on the other
  # configs, so a prepared copy of ``2d`` / ``3d`` stays valid beside the patch configs.
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
      SyntheticOrgansConfig(
          name="patches2d", description="2D patches (32, 32) at (0.8, 0.8) mm centred on "
          "background / organ / tumour, class label.",
          ndim=2, shape=(128, 128), spacing=(0.8, 0.8), patch_size=(32, 32),
          patches_per_image=2,
          split_sizes=(("train", 3000), ("validation", 500), ("test", 1000))),
      SyntheticOrgansConfig(
          name="patches3d", description="3D patches (16, 32, 32) at (2.5, 0.8, 0.8) mm centred "
          "on background / organ / tumour, class label.",
          ndim=3, shape=(64, 96, 96), spacing=(2.5, 0.8, 0.8), patch_size=(16, 32, 32),
          patches_per_image=8,
          split_sizes=(("train", 3000), ("validation", 500), ("test", 1000))),
  ]
  DEFAULT_CONFIG_NAME = "3d"

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    # array_record is the only format readable without TensorFlow.
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    ndim = config.ndim
    if config.patch_size:
      return self._patch_info()
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
        metadata=tfds.core.MetadataDict(class_names=list(organ_ct.CLASS_NAMES)),
    )

  def _patch_info(self) -> tfds.core.DatasetInfo:
    ndim = self.builder_config.ndim
    features = {
        "image": tfds.features.Tensor(shape=self.builder_config.patch_size, dtype=np.float32,
                                      encoding="zlib"),
        "label": tfds.features.ClassLabel(names=list(organ_patches.CLASS_NAMES)),
        "mask": tfds.features.Tensor(shape=self.builder_config.patch_size, dtype=np.uint8,
                                     encoding="zlib"),
        "spacing": tfds.features.Tensor(shape=(ndim,), dtype=np.float32),
        "case": tfds.features.Text(),
        "source": tfds.features.Text(),
        "centre": tfds.features.Tensor(shape=(ndim,), dtype=np.int32),
    }
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label"),
        homepage="https://github.com/medjax/medjax",
        metadata=tfds.core.MetadataDict(class_names=list(organ_patches.CLASS_NAMES)),
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
    if config.patch_size:
      yield from self._generate_patches(split, size, spacing)
      return
    for index in range(size):
      seed = config.seed + SEED_OFFSETS[split] + index
      case = f"{split}_{index:05d}"
      if config.ndim == 3:
        image, label = organ_ct.make_volume(seed, config.shape, config.spacing)
        yield case, {"image": image, "label": label, "spacing": spacing, "case": case}
      else:
        image, label, lesion = organ_ct.make_slice(seed, config.shape, config.spacing)
        yield case, {"image": image, "label": label, "spacing": spacing, "case": case,
                     "lesion": lesion}

  def _generate_patches(self, split: str, size: int,
                        spacing: np.ndarray) -> Iterator[tuple[str, dict[str, Any]]]:
    config = self.builder_config
    patches = organ_patches.generate(
        config.seed + SEED_OFFSETS[split], size, ndim=config.ndim, shape=config.shape,
        spacing=config.spacing, patch_size=config.patch_size,
        per_image=config.patches_per_image, background_band_mm=config.background_band_mm,
        max_images=100_000)
    for index, patch in enumerate(patches):
      case = f"{split}_{index:05d}"
      yield case, {"image": patch["image"], "label": patch["label"], "mask": patch["mask"],
                   "spacing": spacing, "case": case,
                   "source": f"{split}_{patch['image_index']:05d}", "centre": patch["centre"]}
