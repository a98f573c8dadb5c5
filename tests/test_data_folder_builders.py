"""Builders nnunet_raw / decathlon / lits: prepared values, spacing, splits, label sets, bad cases."""
import json
import os

import dataset_writers as writers
import numpy as np
import pytest

from medjax.data.builders import datasets, folder_datasets, shard_writing, splits
from medjax.data.preprocessing import apply_plan
from medjax.errors import InputError


def _split(data_dir, layout, raw, split="train", **kwargs):
  source = datasets.load_source(layout, split, str(data_dir), manual_dir=str(raw), **kwargs)
  return {ex["case"].decode(): ex for ex in (source[i] for i in range(len(source)))}


def _metadata(data_dir, layout, raw, **kwargs):
  return folder_datasets.prepared_metadata(
      datasets.get_builder(layout, str(data_dir), manual_dir=str(raw), **kwargs))


def _assert_maps_back(example, truth):
  """The stored record maps the prepared label back onto the raw label exactly."""
  record = json.loads(example["record"])
  np.testing.assert_allclose(record["original_affine"], truth["affine"], atol=1e-5)
  np.testing.assert_allclose(record["original_spacing"], truth["spacing"], rtol=1e-6)
  np.testing.assert_array_equal(apply_plan.to_native(example["label"], record), truth["label"])


def _prepared(folder):
  return sorted(p for p in os.listdir(folder) if not p.startswith("."))  # TFDS keeps a .config/


def _assert_locations(example):
  label, rows = example["label"], example["locations"]
  assert rows.dtype == np.int32 and rows.shape[1] == 1 + label.ndim
  assert set(rows[:, 0].tolist()) == set(np.unique(label).tolist()) - {0}
  np.testing.assert_array_equal(label[tuple(rows[:, 1:].T)], rows[:, 0])


def test_nnunet_raw_two_channels_prepared(tmp_path):
  raw = tmp_path / "Dataset001_Tiny"
  truth = writers.write_nnunet_raw(str(raw), test_cases=("case_t",))
  train = _split(tmp_path / "data", "nnunet_raw", raw, fold=1, num_folds=3)  # fold: load time only
  test = _split(tmp_path / "data", "nnunet_raw", raw, "test")
  meta = _metadata(tmp_path / "data", "nnunet_raw", raw)
  assert sorted(train) == meta["cases"]["train"] == ["case_a", "case_b", "case_c"]
  assert sorted(test) == meta["cases"]["test"] == ["case_t"]
  assert meta["skipped"] == [] and meta["dataset"]["channel_names"] == ["CT", "T2"]
  assert meta["dataset"]["labels"] == {"background": 0, "organ": 1, "lesion": 2}
  assert meta["dataset"]["manual_dir"] == str(raw) and meta["dataset"]["layout"] == "nnunet_raw"
  plan = meta["plan"]
  assert plan["num_classes"] == 3 and plan["channel_names"] == ["CT", "T2"]
  assert [n["scheme"] for n in plan["normalization"]] == ["ct", "zscore"]
  np.testing.assert_allclose(plan["target_spacing"], writers.SPACING, rtol=1e-6)
  for case, example in {**train, **test}.items():
    raw_image = truth[case]["image"]
    assert example["image"].shape == (8, 12, 10, 2) and example["image"].dtype == np.float32
    np.testing.assert_allclose(example["spacing"], writers.SPACING, rtol=1e-6)
    assert set(np.unique(example["label"]).tolist()) == set(np.unique(truth[case]["label"]).tolist())
    # Same spacing everywhere: no resampling, so the values are the plan's normalisation of the raw
    # voxels: CT clipped to the foreground percentiles and z-scored, the MR channel per image.
    ct = plan["normalization"][0]
    expected = (np.clip(raw_image[..., 0], *ct["clip"]) - ct["mean"]) / ct["std"]
    np.testing.assert_allclose(example["image"][..., 0], expected, rtol=1e-4, atol=1e-4)
    t2 = raw_image[..., 1]
    np.testing.assert_allclose(example["image"][..., 1], (t2 - t2.mean()) / t2.std(), atol=1e-3)
    _assert_maps_back(example, truth[case])
    _assert_locations(example)
  fold_train, fold_validation = splits.kfold(meta["cases"]["train"], num_folds=3, fold=1)
  assert sorted(fold_train + fold_validation) == sorted(train) and len(fold_validation) == 1


def test_nnunet_raw_nrrd_without_labelled_test_set(tmp_path):
  raw = tmp_path / "nrrd"
  truth = writers.write_nnunet_raw(str(raw), channel_names=("MR",), file_ending=".nrrd",
                                   test_cases=("case_t",), test_labelled=False)
  train = _split(tmp_path / "data", "nnunet_raw", raw)
  assert sorted(train) == ["case_a", "case_b", "case_c"]
  for case, example in train.items():
    assert example["image"].shape == (8, 12, 10, 1)
    _assert_maps_back(example, truth[case])
  with pytest.raises(InputError, match="split 'test' of nnunet_raw: expected one of train"):
    datasets.load_source("nnunet_raw", "test", str(tmp_path / "data"), manual_dir=str(raw))


def test_decathlon_4d_channels_prepared(tmp_path):
  raw = tmp_path / "Task01_BrainTumourTiny"
  truth = writers.write_decathlon(str(raw), test_cases=("brats_009",))
  train = _split(tmp_path / "data", "decathlon", raw)
  meta = _metadata(tmp_path / "data", "decathlon", raw)
  assert sorted(train) == ["brats_001", "brats_002", "brats_003"]
  assert meta["dataset"]["channel_names"] == ["FLAIR", "T1w"] and "test" not in meta["cases"]
  assert [n["scheme"] for n in meta["plan"]["normalization"]] == ["zscore", "zscore"]
  for case, example in train.items():
    assert example["image"].shape == (8, 12, 10, 2)
    flair = truth[case]["image"][..., 0]
    np.testing.assert_allclose(example["image"][..., 0], (flair - flair.mean()) / flair.std(),
                               atol=1e-3)
    _assert_maps_back(example, truth[case])


def test_lits_resamples_a_thick_slice_case_to_the_median_spacing(tmp_path):
  raw = tmp_path / "lits"
  truth = writers.write_lits(str(raw), numbers=(0, 1, 2), test_numbers=(5,))
  thick = writers.oblique_affine((3.0, 0.8, 0.8), angle=0.2)
  label = truth["volume-2"]["label"]
  for name, array in (("volume-2.nii", truth["volume-2"]["image"][..., 0].astype(np.int16)),
                      ("segmentation-2.nii", label)):
    writers.io.write_nifti(str(raw / "Training Batch 1" / name), array, thick)
  truth["volume-2"].update(affine=thick, spacing=(3.0, 0.8, 0.8))
  train = _split(tmp_path / "data", "lits", raw, patch_size=(8, 8, 8))
  meta = _metadata(tmp_path / "data", "lits", raw, patch_size=(8, 8, 8))
  assert meta["plan"]["patch_size"] == [8, 8, 8]
  np.testing.assert_allclose(meta["plan"]["target_spacing"], (1.5, 0.8, 0.8), rtol=1e-6)
  assert meta["dataset"]["labels"] == {"background": 0, "liver": 1, "tumour": 2}
  assert sorted(train) == ["volume-0", "volume-1", "volume-2"]
  assert train["volume-0"]["image"].shape == (8, 12, 10, 1)
  assert train["volume-2"]["image"].shape == (16, 12, 10, 1)  # 8 slices of 3 mm -> 16 of 1.5 mm
  np.testing.assert_allclose(train["volume-2"]["spacing"], (1.5, 0.8, 0.8), rtol=1e-6)
  assert set(np.unique(train["volume-2"]["label"]).tolist()) == {0, 1, 2}
  # Nearest/linear label resampling of a 2x upsampled axis is exactly invertible.
  _assert_maps_back(train["volume-0"], truth["volume-0"])
  _assert_maps_back(train["volume-2"], truth["volume-2"])


def test_written_straight_to_the_shard_in_case_order(tmp_path, monkeypatch):
  """No TFDS shuffler: it buffers 1 GB in memory, then spills through tf.io.gfile (needs TensorFlow)."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top

  def no_shuffler(*args, **kwargs):
    raise AssertionError("the TFDS shuffler was used")
  monkeypatch.setattr(shuffle, "Shuffler", no_shuffler)
  raw = tmp_path / "raw"
  truth = writers.write_nnunet_raw(str(raw), cases=("d", "a", "c", "b"))
  source = datasets.load_source("nnunet_raw", "train", str(tmp_path / "data"), manual_dir=str(raw))
  meta = _metadata(tmp_path / "data", "nnunet_raw", raw)
  stored = [source[i]["case"].decode() for i in range(len(source))]
  assert stored == meta["cases"]["train"] == ["a", "b", "c", "d"]
  np.testing.assert_array_equal(apply_plan.to_native(source[2]["label"], json.loads(
      source[2]["record"])), truth["c"]["label"])


def test_one_shard_releases_each_example_once_the_next_is_asked_for():
  made = []

  def examples():
    for index in range(3):
      made.append({"image": np.zeros(4, np.float32), "case": str(index)})
      yield index, made[-1]
  [generate] = shard_writing.one_shard(examples)
  iterator = generate()
  assert next(iterator)[1]["case"] == "0"
  assert next(iterator)[1]["case"] == "1" and made[0] == {}  # the first one's arrays are gone
  assert [key for key, _ in iterator] == [2] and made[1] == made[2] == {}


def test_nnunet_raw_2d_images(tmp_path):
  raw = tmp_path / "slices"
  truth = writers.write_nnunet_raw(str(raw), shape=(24, 20), spacing=(0.9, 0.7))
  train = _split(tmp_path / "data", "nnunet_raw", raw, ndim=2)
  assert sorted(train) == ["case_a", "case_b", "case_c"]
  for case, example in train.items():
    assert example["image"].shape == (24, 20, 2) and example["locations"].shape[1] == 3
    np.testing.assert_allclose(example["spacing"], (0.9, 0.7), rtol=1e-6)
    _assert_maps_back(example, truth[case])
    _assert_locations(example)
  with pytest.raises(InputError, match="case case_a: a 2D image; this dataset is prepared as 3D "
                                       r"\(set dataset_kwargs.ndim=2\)"):
    datasets.load_source("nnunet_raw", "train", str(tmp_path / "data"), manual_dir=str(raw))


def test_prepared_once_per_manual_dir(tmp_path, monkeypatch):
  first, second = tmp_path / "first", tmp_path / "second"
  writers.write_nnunet_raw(str(first), cases=("a", "b"))
  writers.write_nnunet_raw(str(second), cases=("x", "y"), seed=7)
  data = tmp_path / "data"
  assert sorted(_split(data, "nnunet_raw", first)) == ["a", "b"]
  assert sorted(_split(data, "nnunet_raw", second)) == ["x", "y"]
  assert len(_prepared(data / "nnunet_raw")) == 2
  # Spelling out a default option (as unet3d_folder.py's dataset_kwargs do) is the same dataset.
  assert sorted(_split(data, "nnunet_raw", first, skip_bad_cases=False)) == ["a", "b"]
  assert len(_prepared(data / "nnunet_raw")) == 2
  os.rename(first, tmp_path / "moved")  # prepared: the raw files are not read again
  monkeypatch.chdir(tmp_path)
  assert sorted(_split(data, "nnunet_raw", "first")) == ["a", "b"]  # relative path, same key
  with pytest.raises(InputError, match="dataset_kwargs.manual_dir"):
    datasets.load_source("nnunet_raw", "train", str(data))


def test_failed_prepare_leaves_nothing_and_loses_nothing(tmp_path):
  good, bad = tmp_path / "good", tmp_path / "bad"
  writers.write_nnunet_raw(str(good), cases=("a", "b"))
  truth = writers.write_nnunet_raw(str(bad))
  image = truth["case_b"]["image"][..., 1].copy()
  image[2, 3, 4] = np.nan
  os.remove(bad / "imagesTr" / "case_b_0001.nii.gz")
  writers.write_image(str(bad / "imagesTr" / "case_b_0001.nii.gz"), image, truth["case_b"]["affine"])
  data = tmp_path / "data"
  before = _split(data, "nnunet_raw", good)
  with pytest.raises(InputError) as error:
    datasets.load_source("nnunet_raw", "train", str(data), manual_dir=str(bad))
  reason = "case case_b: channel 1 (T2) has 1 NaN/inf voxel(s); expected finite intensities"
  assert str(error.value) == (f"1 bad case in {bad} (case_b; first: {reason}); fix or remove it, "
                              "or leave it out with dataset_kwargs.skip_bad_cases=True")
  assert error.value.details == (f"bad case case_b: {reason[len('case case_b: '):]}",)
  prepared = _prepared(data / "nnunet_raw")
  assert len(prepared) == 1 and prepared[0].startswith("folder_good_")  # nothing of "bad" is left
  assert not [p for p in os.listdir(data / "nnunet_raw" / prepared[0]) if p.startswith("incomplete")]
  after = _split(data, "nnunet_raw", good)
  for case in before:
    np.testing.assert_array_equal(after[case]["image"], before[case]["image"])

  skipping = _split(data, "nnunet_raw", bad, skip_bad_cases=True)
  meta = _metadata(data, "nnunet_raw", bad, skip_bad_cases=True)
  assert sorted(skipping) == meta["cases"]["train"] == ["case_a", "case_c"]
  assert meta["skipped"] == [{"case": "case_b", "reason": reason}]


def test_every_bad_case_is_reported_before_preparation_stops(tmp_path):
  """As nnU-Net's integrity check: one detail line per bad case (training and test), then one
  error; with skip_bad_cases all of them are left out and listed."""
  raw = tmp_path / "raw"
  writers.write_nnunet_raw(str(raw), ("a", "b", "c"), channel_names=("CT",), test_cases=("t",))
  (raw / "labelsTr" / "a.nii.gz").write_bytes(b"not a NIfTI file")
  os.remove(raw / "imagesTs" / "t_0000.nii.gz")
  with pytest.raises(InputError) as error:
    datasets.load_source("nnunet_raw", "train", str(tmp_path / "data"), manual_dir=str(raw))
  assert [line.split(":")[0] for line in error.value.details] == ["bad case a", "bad case t"]
  assert error.value.details[1] == ("bad case t: channel 0 (CT) file imagesTs/t_0000.nii.gz is "
                                    "missing")
  assert str(error.value).startswith(f"2 bad cases in {raw} (a, t; first: case a: label: ")
  assert sorted(_split(tmp_path / "data", "nnunet_raw", raw, skip_bad_cases=True)) == ["b", "c"]
  meta = _metadata(tmp_path / "data", "nnunet_raw", raw, skip_bad_cases=True)
  assert [s["case"] for s in meta["skipped"]] == ["a", "t"]
  assert meta["cases"] == {"train": ["b", "c"]}
