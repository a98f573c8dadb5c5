"""TFDS builders `nndetection_raw`, `luna16`, `label_components`: a local folder, as detection data.

Each builder reads the layout of the same name
(`medjax.data.builders.detection_layouts`, whose docstring says which files go
where) from `manual_dir` and writes detection examples
(`medjax.data.builders.detection_examples`: image, instance map, padded boxes,
classes, diameters, world centres, excluded findings, spacing, affine) as
`array_record` (no TensorFlow, nothing downloaded, native spacing kept)::

  datasets.load_source("luna16", "train", data_dir, manual_dir="/data/LUNA16")
  datasets.load_source("label_components", "train", data_dir,
                       manual_dir="/data/Task03_Liver", layout="decathlon", label="cancer")

(`--config.dataset=luna16 --config.dataset_kwargs.manual_dir=DIR` on the
command line). Splits: ``train`` (every labelled training case) and ``test``
(nnDetection's labelled ``imagesTs``/``labelsTs``, or the folder's labelled
test set; absent otherwise). LUNA16's ten subsets are its cross-validation
folds: `prepared_metadata(builder)["subsets"]` maps each series to its subset.

Preparation checks every case first (one case in memory at a time). A bad
case is reported on the `medjax.data` logger (one line each, starting with
``case <id>:``), then preparation stops with one `InputError` line that
counts them, so a folder is fixed in one pass. With `skip_bad_cases=True`
the bad cases (and LUNA16 annotations of absent series) are left out and
listed in `prepared_metadata(builder)["skipped"]`; a partial LUNA16 download
(some subsets) needs it, since `annotations.csv` names every series.

Prepared once per `manual_dir` and options (`datasets.load_source` names the
config after the folder); a failed preparation leaves nothing behind.
Options (`dataset_kwargs`): `manual_dir`, `skip_bad_cases`, `max_boxes`
(default 16), `max_excluded` (default 16; 320 for LUNA16, whose scans have up
to 261 irrelevant findings), and for `label_components` `layout`
(``nnunet_raw``, ``decathlon``, ``lits``), `label` (class name or value;
empty: the only foreground class) and `connectivity` (1 faces, 2 edges, 3
corners: 26 neighbours).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Iterator

import tensorflow_datasets as tfds

from medjax.data.builders import detection_examples, detection_layouts, raw_layouts, shard_writing
from medjax.errors import InputError

LOGGER = logging.getLogger("medjax.data")
LUNA16_MAX_EXCLUDED = 320


@dataclasses.dataclass(eq=False)
class DetectionFolderConfig(tfds.core.BuilderConfig):
  """Where the raw folder is, how bad cases are handled, how far ground truth is padded."""
  manual_dir: str = ""
  skip_bad_cases: bool = False
  max_boxes: int = detection_examples.MAX_BOXES
  max_excluded: int = detection_examples.MAX_EXCLUDED

  def __post_init__(self):
    self.manual_dir = str(self.manual_dir)
    self.skip_bad_cases = bool(self.skip_bad_cases)
    self.max_boxes, self.max_excluded = int(self.max_boxes), int(self.max_excluded)
    if self.max_boxes < 1 or self.max_excluded < 0:
      raise ValueError(f"config {self.name}: max_boxes={self.max_boxes} must be >= 1 and "
                       f"max_excluded={self.max_excluded} >= 0")


@dataclasses.dataclass(eq=False)
class ComponentsConfig(DetectionFolderConfig):
  """A segmentation folder (`layout`) whose class `label` is cut into connected components."""
  layout: str = "nnunet_raw"
  label: str = ""
  connectivity: int = 3

  def __post_init__(self):
    super().__post_init__()
    self.layout, self.label, self.connectivity = str(self.layout), str(self.label), int(
        self.connectivity)
    if self.layout not in raw_layouts.LAYOUTS:
      raise ValueError(f"config {self.name}: layout={self.layout!r}; expected one of "
                       f"{list(raw_layouts.LAYOUTS)}")
    if self.connectivity not in (1, 2, 3):
      raise ValueError(f"config {self.name}: connectivity={self.connectivity}; expected 1, 2 or 3")


def prepared_metadata(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """What preparing a detection folder recorded.

  Returns:
    `{"class_names": [...], "layout", "manual_dir", "max_boxes", "max_excluded",
    "cases": {split: [ids in storage order]}, "skipped": [{"case", "reason"}],
    ...}` plus the layout's extras (LUNA16: `subsets` {series: subset number},
    the CSV paths; nnDetection: `modalities`; components: `source_layout`,
    `label_value`).
  """
  metadata = builder.info.metadata
  if not metadata or "cases" not in metadata:
    raise InputError(f"dataset {builder.name}/{builder.builder_config.name}: no case list in its "
                     "metadata; is it a prepared detection folder?")
  return dict(metadata)


def report_bad_cases(manual_dir: str, problems: list[tuple[str, str]]) -> None:
  """Logs one line per bad case, then raises one line counting them (skip them: skip_bad_cases)."""
  for _, reason in problems:
    LOGGER.error("bad case: %s", reason)
  raise InputError(f"{manual_dir}: {len(problems)} bad case(s), each logged above; the first: "
                   f"{problems[0][1]} (fix them, or set dataset_kwargs.skip_bad_cases=True to "
                   "leave them out)")


class _DetectionFolderBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Shared by the layouts: scan, check every case, then write the examples."""

  LAYOUT = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [DetectionFolderConfig(name="folder",
                                           description="A local folder (manual_dir).")]
  DEFAULT_CONFIG_NAME = "folder"

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=detection_examples.features(config.max_boxes, config.max_excluded),
        homepage="https://github.com/medjax/medjax",
        disable_shuffling=True,  # stored in sorted case order (`cases` in the metadata)
        metadata=tfds.core.MetadataDict())

  def _scan(self) -> detection_layouts.DetectionFolder:
    raise NotImplementedError

  def _load(self, case: detection_layouts.DetectionCase,
            folder: detection_layouts.DetectionFolder) -> dict[str, Any]:
    raise NotImplementedError

  def _example(self, case: detection_layouts.DetectionCase,
               folder: detection_layouts.DetectionFolder) -> dict[str, Any]:
    loaded = self._load(case, folder)
    config = self.builder_config
    return detection_examples.make_example(
        case.case_id, loaded.image, loaded.instances, loaded.classes, loaded.spacing,
        loaded.affine, diameters_mm=loaded.diameters_mm, centers_world=loaded.centers_world,
        excluded_world=loaded.excluded_world, max_boxes=config.max_boxes,
        max_excluded=config.max_excluded, where=loaded.where)

  def _shard_iterators_per_split(self, dl_manager: tfds.download.DownloadManager
                                 ) -> dict[str, list[Any]]:
    del dl_manager  # reads config.manual_dir, nothing to download
    config = self.builder_config
    if not config.manual_dir:
      raise InputError(f"dataset {self.name}: needs dataset_kwargs.manual_dir, the folder with "
                       f"the {self.LAYOUT} layout")
    folder = self._scan()
    problems = list(folder.orphans)
    kept: dict[str, list[detection_layouts.DetectionCase]] = {}
    for split, cases in folder.splits.items():
      kept[split] = []
      for case in cases:
        try:
          self._example(case, folder)  # every check; one case in memory at a time
        except InputError as error:
          problems.append((case.case_id, str(error)))
          continue
        kept[split].append(case)
    if problems and not config.skip_bad_cases:
      report_bad_cases(config.manual_dir, problems)
    if not kept.get("train"):
      raise InputError(f"{config.manual_dir}: every training case was skipped as bad "
                       f"(first: {problems[0][1] if problems else 'none'})")
    extra = {k: v for k, v in folder.extra.items() if k != "dataset"}
    self.info.metadata.update({
        "class_names": list(folder.class_names), "layout": self.LAYOUT,
        "manual_dir": config.manual_dir, "max_boxes": config.max_boxes,
        "max_excluded": config.max_excluded,
        "cases": {split: [c.case_id for c in cases] for split, cases in kept.items() if cases},
        "skipped": [{"case": case, "reason": reason} for case, reason in problems], **extra})
    return {split: shard_writing.one_shard(functools.partial(self._generate, cases, folder))
            for split, cases in kept.items() if cases}

  def _generate(self, cases: list[detection_layouts.DetectionCase],
                folder: detection_layouts.DetectionFolder) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, case in enumerate(cases):
      yield index, self._example(case, folder)


class NndetectionRaw(_DetectionFolderBuilder):
  """nnDetection's raw layout (`detection_layouts` docstring): `manual_dir` is the task folder
  (``dataset.json``/``dataset.yaml`` and ``raw_splitted/{imagesTr,labelsTr}``, instance maps
  with a JSON of instance classes per case)."""
  LAYOUT = "nndetection_raw"

  def _scan(self):
    return detection_layouts.scan_nndetection(self.builder_config.manual_dir)

  def _load(self, case, folder):
    return detection_layouts.read_nndetection(case, folder)


class Luna16(_DetectionFolderBuilder):
  """LUNA16 (`detection_layouts` docstring): ``subset*/{seriesuid}.mhd`` + ``annotations.csv``
  (world mm, LPS) + ``annotations_excluded.csv``; nodules drawn as spheres of their diameter."""
  LAYOUT = "luna16"
  BUILDER_CONFIGS = [DetectionFolderConfig(name="folder", description="A LUNA16 folder.",
                                           max_excluded=LUNA16_MAX_EXCLUDED)]

  def _scan(self):
    return detection_layouts.scan_luna16(self.builder_config.manual_dir)

  def _load(self, case, folder):
    return detection_layouts.read_luna16(case, folder)


class LabelComponents(_DetectionFolderBuilder):
  """Lesions as the connected components of one class of an nnU-Net raw / Decathlon / LiTS folder
  (`detection_layouts` docstring): `layout` names the folder's layout, `label` the class."""
  LAYOUT = "label_components"
  BUILDER_CONFIGS = [ComponentsConfig(name="folder", description="A segmentation folder.")]

  def _scan(self):
    config = self.builder_config
    return detection_layouts.scan_components(config.layout, config.manual_dir, config.label)

  def _load(self, case, folder):
    return detection_layouts.read_components(case, folder, self.builder_config.connectivity)


BUILDERS = {"nndetection_raw": NndetectionRaw, "luna16": Luna16,
            "label_components": LabelComponents}
