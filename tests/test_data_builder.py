"""synthetic_organs TFDS builder and load_source: determinism, splits, locking."""
import os
import threading

import numpy as np
import pytest

from medjax.data.builders import datasets
from medjax.data.builders.synthetic_organs import SyntheticOrgans, SyntheticOrgansConfig
from medjax.errors import InputError

TINY_3D = SyntheticOrgansConfig(
    name="3d_tiny", ndim=3, shape=(16, 24, 24), spacing=(2.5, 0.8, 0.8),
    split_sizes=(("train", 3), ("validation", 1), ("test", 2)))
TINY_2D = SyntheticOrgansConfig(
    name="2d_tiny", ndim=2, shape=(32, 32), spacing=(0.8, 0.8),
    split_sizes=(("train", 6), ("validation", 2), ("test", 2)))


def _all(source):
  return {ex["case"]: ex for ex in (source[i] for i in range(len(source)))}


def test_builtin_configs_have_the_documented_sizes():
  configs = {c.name: c for c in SyntheticOrgans.BUILDER_CONFIGS}
  assert dict(configs["3d"].split_sizes) == {"train": 24, "validation": 4, "test": 8}
  assert dict(configs["2d"].split_sizes) == {"train": 400, "validation": 50, "test": 100}
  assert configs["3d"].shape == (64, 96, 96) and configs["2d"].shape == (128, 128)


def test_two_builds_are_identical_and_splits_disjoint(tmp_path):
  first = {s: _all(datasets.load_source("synthetic_organs", s, str(tmp_path / "a"), config=TINY_3D))
           for s in ("train", "validation", "test")}
  second = _all(datasets.load_source("synthetic_organs", "train", str(tmp_path / "b"), config=TINY_3D))
  assert [len(first[s]) for s in ("train", "validation", "test")] == [3, 1, 2]
  assert sorted(first["train"]) == sorted(second) == [b"train_00000", b"train_00001", b"train_00002"]
  for case, example in first["train"].items():
    np.testing.assert_array_equal(example["image"], second[case]["image"])
    np.testing.assert_array_equal(example["label"], second[case]["label"])
    assert example["image"].dtype == np.float32 and example["label"].dtype == np.uint8
    assert example["image"].shape == (16, 24, 24)
    np.testing.assert_allclose(example["spacing"], [2.5, 0.8, 0.8])
  digests = [ex["image"].tobytes() for split in first.values() for ex in split.values()]
  assert len(set(digests)) == len(digests)  # no case shared between splits


def test_2d_config_has_lesion_label(tmp_path):
  source = datasets.load_source("synthetic_organs", "train", str(tmp_path), config=TINY_2D)
  examples = [source[i] for i in range(len(source))]
  assert len(examples) == 6
  for ex in examples:
    assert ex["image"].shape == (32, 32)
    assert int(ex["lesion"]) == int((ex["label"] == 2).any())


def test_load_source_is_idempotent_and_safe_concurrently(tmp_path):
  results = []
  threads = [threading.Thread(target=lambda: results.append(len(datasets.load_source(
      "synthetic_organs", "test", str(tmp_path), config=TINY_3D)))) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert results == [2, 2]
  folder = tmp_path / "synthetic_organs" / "3d_tiny" / "1.0.0"
  record = next(p for p in folder.iterdir() if "test.array_record" in p.name)
  before = os.stat(record).st_mtime_ns
  assert len(datasets.load_source("synthetic_organs", "test", str(tmp_path), config=TINY_3D)) == 2
  assert os.stat(record).st_mtime_ns == before  # not rebuilt
  assert not [p for p in (tmp_path / "synthetic_organs" / "3d_tiny").iterdir() if "incomplete" in p.name]


def test_bad_names_and_splits_are_input_errors(tmp_path):
  with pytest.raises(InputError, match="not_a_dataset"):
    datasets.load_source("not_a_dataset/3d", "train", str(tmp_path))
  with pytest.raises(InputError, match="trian"):
    datasets.load_source("synthetic_organs", "trian", str(tmp_path), config=TINY_3D)


def test_config_field_overrides_make_a_separate_variant(tmp_path):
  kwargs = dict(shape=[16, 24, 24], split_sizes={"train": 2, "validation": 1, "test": 1})
  source = datasets.load_source("synthetic_organs/3d", "train", str(tmp_path), **kwargs)
  assert len(source) == 2 and source[0]["image"].shape == (16, 24, 24)
  same = datasets.load_source("synthetic_organs/3d", "train", str(tmp_path), shape=(16, 24, 24),
                              split_sizes=(("train", 2), ("validation", 1), ("test", 1)))
  np.testing.assert_array_equal(source[0]["image"], same[0]["image"])
  variants = [p.name for p in (tmp_path / "synthetic_organs").iterdir() if not p.name.startswith(".")]
  assert len(variants) == 1 and variants[0].startswith("3d_")
  with pytest.raises(InputError, match=r"^dataset 'synthetic_organs/3d': unknown config fields \['shap'\]"):
    datasets.load_source("synthetic_organs/3d", "train", str(tmp_path), shap=(1, 2, 3))
  with pytest.raises(InputError, match="ndim=3"):
    datasets.load_source("synthetic_organs/3d", "train", str(tmp_path), shape=(1, 2))
