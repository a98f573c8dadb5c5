"""TFDS builder `medmnist`: the MedMNIST v2 `.npz` files, 2D and 3D, every size, official splits.

MedMNIST v2 (Yang et al., Scientific Data 2023) and its larger sizes
(MedMNIST+: 64, 128, 224 in 2D; 64 in 3D). Nothing is downloaded: put the
files you have in one folder (`manual_dir`)::

  <manual_dir>/<flag>.npz          size 28, e.g. pathmnist.npz, organmnist3d.npz
  <manual_dir>/<flag>_<size>.npz   other sizes, e.g. pathmnist_224.npz, organmnist3d_64.npz

each with the arrays ``train_images``, ``train_labels``, ``val_images``,
``val_labels``, ``test_images``, ``test_labels`` (as distributed). Open a
split with ``datasets.load_source("medmnist/pathmnist", "train", data_dir,
manual_dir=DIR, size=64)`` (command line: ``--config.dataset=medmnist/pathmnist
--config.dataset_kwargs.manual_dir=DIR --config.dataset_kwargs.size=64``).

Configs: one per flag (`FLAGS`); `size` (28 by default) is a config field.
Splits: ``train``, ``validation`` (the files' ``val``), ``test``, in the
files' order. Features: `image` uint8 `(H, W)` (grey), `(H, W, 3)` (RGB) or
`(D, H, W)` (3D); `label` int64, the class (`chestmnist`, multi-label: a
`(14,)` vector of 0/1); `case` text (``"<split>_<index>"``). The metadata
holds `num_classes`, `task` and `channels`.

The arrays are streamed from the `.npz` (one image in memory at a time), so
the 224-pixel files (tissuemnist: 165,466 training images, 8.3 GB as uint8)
are prepared without loading them whole. A missing file or key, a corrupt
or truncated file, an image of the wrong shape or a label outside the classes
is a one-line `InputError` naming the file and the array.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zipfile
import zlib
from typing import Any, Iterator, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from medjax.data.builders import shard_writing
from medjax.errors import InputError


class Flag(NamedTuple):
  """One MedMNIST dataset: spatial dims, image channels, classes, task (as MedMNIST's INFO)."""
  ndim: int
  channels: int
  num_classes: int
  task: str


FLAGS: dict[str, Flag] = {
    "pathmnist": Flag(2, 3, 9, "multi-class"),
    "chestmnist": Flag(2, 1, 14, "multi-label, binary-class"),
    "dermamnist": Flag(2, 3, 7, "multi-class"),
    "octmnist": Flag(2, 1, 4, "multi-class"),
    "pneumoniamnist": Flag(2, 1, 2, "binary-class"),
    "retinamnist": Flag(2, 3, 5, "ordinal-regression"),
    "breastmnist": Flag(2, 1, 2, "binary-class"),
    "bloodmnist": Flag(2, 3, 8, "multi-class"),
    "tissuemnist": Flag(2, 1, 8, "multi-class"),
    "organamnist": Flag(2, 1, 11, "multi-class"),
    "organcmnist": Flag(2, 1, 11, "multi-class"),
    "organsmnist": Flag(2, 1, 11, "multi-class"),
    "organmnist3d": Flag(3, 1, 11, "multi-class"),
    "nodulemnist3d": Flag(3, 1, 2, "binary-class"),
    "adrenalmnist3d": Flag(3, 1, 2, "binary-class"),
    "fracturemnist3d": Flag(3, 1, 3, "multi-class"),
    "vesselmnist3d": Flag(3, 1, 2, "binary-class"),
    "synapsemnist3d": Flag(3, 1, 2, "binary-class"),
}
SIZES = {2: (28, 64, 128, 224), 3: (28, 64)}
SPLITS = {"train": "train", "validation": "val", "test": "test"}


def file_name(flag: str, size: int) -> str:
  """``<flag>.npz`` for size 28, else ``<flag>_<size>.npz`` (MedMNIST's names)."""
  return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def image_shape(flag: str, size: int) -> tuple[int, ...]:
  """One image's shape: `(size, size)`, `(size, size, 3)` or `(size, size, size)`."""
  info = FLAGS[flag]
  return (size,) * info.ndim + ((3,) if info.channels == 3 else ())


@dataclasses.dataclass(eq=False)
class MedmnistConfig(tfds.core.BuilderConfig):
  """A MedMNIST flag at one `size`, read from `manual_dir`."""
  size: int = 28
  manual_dir: str = ""

  def __post_init__(self):
    self.size = int(self.size)
    self.manual_dir = str(self.manual_dir)
    flag = self.name.split("_")[0]
    if flag not in FLAGS:
      raise ValueError(f"config {self.name}: unknown MedMNIST flag {flag!r}")
    if self.size not in SIZES[FLAGS[flag].ndim]:
      raise ValueError(f"config {flag}: size={self.size}; expected one of "
                       f"{SIZES[FLAGS[flag].ndim]} for a {FLAGS[flag].ndim}D flag")

  @property
  def flag(self) -> str:
    return self.name.split("_")[0]


def _rows(path: str, key: str) -> tuple[tuple[int, ...], Iterator[np.ndarray]]:
  """(shape, iterator over `array[i]`) of the array `key` in the `.npz` at `path`, streamed."""
  try:
    archive = zipfile.ZipFile(path)
    member = archive.open(key + ".npy")
  except KeyError:
    raise InputError(f"{path}: no array {key!r} (expected train_images, train_labels, "
                     "val_images, val_labels, test_images, test_labels)") from None
  except (OSError, zipfile.BadZipFile) as error:
    raise InputError(f"{path}: not a readable .npz file ({error})") from None
  try:
    version = np.lib.format.read_magic(member)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(member)
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
    raise InputError(f"{path}: array {key!r} is corrupt ({error})") from None
  if fortran or dtype.hasobject or not shape:
    raise InputError(f"{path}: array {key!r} must be a C-ordered numeric array with a "
                     f"leading example axis (got shape {shape}, dtype {dtype})")

  def rows() -> Iterator[np.ndarray]:
    size = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    try:
      for index in range(shape[0]):
        blob = member.read(size)
        if len(blob) != size:
          raise InputError(f"{path}: array {key!r} is truncated at example {index} of {shape[0]}")
        yield np.frombuffer(blob, dtype).reshape(shape[1:])
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as error:
      raise InputError(f"{path}: array {key!r} is corrupt ({error})") from None
    finally:
      member.close()
      archive.close()

  return tuple(shape), rows()


class Medmnist(tfds.core.ShardBasedBuilder):
  """MedMNIST v2 from local `.npz` files (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [MedmnistConfig(name=flag, description=f"MedMNIST {flag}: "
                                    f"{info.ndim}D, {info.channels} channel(s), "
                                    f"{info.num_classes} classes, {info.task}")
                     for flag, info in FLAGS.items()]
  DEFAULT_CONFIG_NAME = "pathmnist"

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    info = FLAGS[config.flag]
    label_shape = (info.num_classes,) if info.task.startswith("multi-label") else ()
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=image_shape(config.flag, config.size),
                                          dtype=np.uint8),
            "label": tfds.features.Tensor(shape=label_shape, dtype=np.int64),
            "case": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://medmnist.com",
        disable_shuffling=True,  # the files' order (shard_writing: written as generated)
        metadata=tfds.core.MetadataDict(num_classes=info.num_classes, task=info.task,
                                        channels=info.channels, size=config.size))

  def _shard_iterators_per_split(self, dl_manager: tfds.download.DownloadManager
                                 ) -> dict[str, list[Any]]:
    del dl_manager  # reads config.manual_dir
    config = self.builder_config
    if not config.manual_dir:
      raise InputError(f"dataset medmnist/{config.flag}: needs dataset_kwargs.manual_dir, the "
                       f"folder with {file_name(config.flag, config.size)}")
    path = os.path.join(config.manual_dir, file_name(config.flag, config.size))
    if not os.path.isfile(path):
      raise InputError(f"{path}: no such file (MedMNIST {config.flag} at size {config.size})")
    return {split: shard_writing.one_shard(functools.partial(self._generate_examples, path,
                                                            split, key))
            for split, key in SPLITS.items()}

  def _generate_examples(self, path: str, split: str,
                         key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    config = self.builder_config
    info = FLAGS[config.flag]
    expected = image_shape(config.flag, config.size)
    images_shape, images = _rows(path, f"{key}_images")
    labels_shape, labels = _rows(path, f"{key}_labels")
    if images_shape[1:] != expected:
      raise InputError(f"{path}: {key}_images has images of shape {images_shape[1:]}; expected "
                       f"{expected} for {config.flag} at size {config.size}")
    width = info.num_classes if info.task.startswith("multi-label") else 1
    if labels_shape[0] != images_shape[0] or int(np.prod(labels_shape[1:])) != width:
      raise InputError(f"{path}: {key}_labels has shape {labels_shape}; expected "
                       f"({images_shape[0]}, {width}) for {images_shape[0]} images")
    high = 2 if width > 1 else info.num_classes
    for index, (image, label) in enumerate(zip(images, labels)):
      label = label.reshape(-1).astype(np.int64)
      if label.min() < 0 or label.max() >= high:
        raise InputError(f"{path}: {key}_labels[{index}] = {label.tolist()}; expected values "
                         f"in 0..{high - 1}")
      if image.dtype != np.uint8:
        if not np.all((image >= 0) & (image <= 255) & (image == np.round(image))):
          raise InputError(f"{path}: {key}_images[{index}] is {image.dtype} outside the "
                           "integers 0..255; expected uint8 images")
        image = image.astype(np.uint8)
      yield index, {"image": image, "label": label if width > 1 else label[0],
                    "case": f"{split}_{index:06d}"}
