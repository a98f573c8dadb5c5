"""raw_layouts: scanning and reading the nnU-Net raw, Decathlon and LiTS layouts; every bad input."""
import json
import os

import dataset_writers as writers
import numpy as np
import pytest

from medjax.data import io
from medjax.data.builders import raw_layouts
from medjax.errors import InputError


def _read_all(layout, root):
  dataset = raw_layouts.scan(layout, root)
  cases = dataset.training + (dataset.test if dataset.test_labelled else ())
  return dataset, {c.case_id: raw_layouts.read_case(c, dataset) for c in cases}


def _assert_as_written(loaded, truth):
  assert sorted(loaded) == sorted(truth)
  for case, got in loaded.items():
    want = truth[case]
    # One file of all channels keeps its dtype (LiTS: int16 HU), else float32.
    assert got.image.dtype == (np.int16 if want.get("file_dtype") == "int16" else np.float32)
    assert got.label.dtype == np.uint8
    np.testing.assert_array_equal(got.image, want["image"])
    np.testing.assert_array_equal(got.label, want["label"])
    np.testing.assert_allclose(got.spacing, want["spacing"], rtol=1e-6)
    np.testing.assert_allclose(got.affine, want["affine"], atol=1e-5)


def test_nnunet_raw_two_channels_nifti_with_labelled_test_set(tmp_path):
  truth = writers.write_nnunet_raw(str(tmp_path), test_cases=("case_t",))
  dataset, loaded = _read_all("nnunet_raw", str(tmp_path))
  assert dataset.channel_names == ("CT", "T2")
  assert dataset.labels == {"background": 0, "organ": 1, "lesion": 2}
  assert [c.case_id for c in dataset.training] == ["case_a", "case_b", "case_c"]
  assert [c.case_id for c in dataset.test] == ["case_t"] and dataset.test_labelled
  assert loaded["case_a"].image.shape == (8, 12, 10, 2)
  assert {int(v) for v in np.unique(loaded["case_a"].label)} == {0, 1, 2}
  _assert_as_written(loaded, truth)


def test_nnunet_raw_nrrd_single_channel_unlabelled_test(tmp_path):
  truth = writers.write_nnunet_raw(str(tmp_path), channel_names=("MR",), file_ending=".nrrd",
                                   test_cases=("case_t",), test_labelled=False)
  dataset, loaded = _read_all("nnunet_raw", str(tmp_path))
  assert dataset.file_ending == ".nrrd" and not dataset.test_labelled
  assert [c.case_id for c in dataset.test] == ["case_t"] and dataset.test[0].label_path is None
  _assert_as_written(loaded, {k: v for k, v in truth.items() if v["split"] == "train"})


def test_decathlon_4d_nifti_becomes_channels(tmp_path):
  truth = writers.write_decathlon(str(tmp_path), test_cases=("brats_009",))
  dataset, loaded = _read_all("decathlon", str(tmp_path))
  assert dataset.channel_names == ("FLAIR", "T1w") and dataset.four_d
  assert dataset.labels == {"background": 0, "edema": 1, "enhancing tumour": 2}
  assert [c.case_id for c in dataset.test] == ["brats_009"] and not dataset.test_labelled
  assert loaded["brats_001"].image.shape == (8, 12, 10, 2)
  _assert_as_written(loaded, {k: v for k, v in truth.items() if v["split"] == "train"})


def test_lits_names_in_batch_folders(tmp_path):
  truth = writers.write_lits(str(tmp_path), numbers=(0, 1, 10), test_numbers=(3,))
  dataset, loaded = _read_all("lits", str(tmp_path))
  assert [c.case_id for c in dataset.training] == ["volume-0", "volume-1", "volume-10"]
  assert dataset.labels == {"background": 0, "liver": 1, "tumour": 2} and dataset.test == ()
  np.testing.assert_allclose(loaded["volume-1"].spacing, (1.5, 0.8, 0.8))
  _assert_as_written(loaded, truth)


def test_read_image_channels_keeps_read_image_for_3d(tmp_path):
  image, _ = writers.make_case(0, channels=3)
  affine = writers.oblique_affine(writers.SPACING)
  io.write_nifti(str(tmp_path / "x4d.nii.gz"), image, affine, channels=True)
  io.write_nifti(str(tmp_path / "x3d.nii.gz"), image[..., 1], affine)
  four = io.read_image_channels(str(tmp_path / "x4d.nii.gz"))
  three = io.read_image_channels(str(tmp_path / "x3d.nii.gz"))
  np.testing.assert_array_equal(four.array, image)
  np.testing.assert_array_equal(three.array, image[..., 1:2])
  np.testing.assert_allclose(four.spacing, writers.SPACING, rtol=1e-6)
  np.testing.assert_allclose(four.affine, three.affine)
  with pytest.raises(InputError, match="expected a 2D or 3D NIfTI image, got shape"):
    io.read_image(str(tmp_path / "x4d.nii.gz"))  # read_image still rejects channels


# ----------------------------------------------------------------------------- bad input

def _nnunet(tmp_path):
  root = str(tmp_path / "raw")
  truth = writers.write_nnunet_raw(root)
  return root, truth


def _case_error(layout, root, case_id):
  dataset = raw_layouts.scan(layout, root)
  case = {c.case_id: c for c in dataset.training}[case_id]
  with pytest.raises(InputError) as error:
    raw_layouts.read_case(case, dataset)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"case {case_id}: ")
  return message


def _rewrite(root, name, array, affine):
  path = os.path.join(root, name)
  os.remove(path)
  writers.write_image(path, array, affine)


def test_label_shape_spacing_or_affine_disagreeing_with_the_image(tmp_path):
  root, truth = _nnunet(tmp_path)
  label, affine = truth["case_b"]["label"], truth["case_b"]["affine"]
  _rewrite(root, "labelsTr/case_b.nii.gz", label[:, :, :9], affine)
  assert "label shape (8, 12, 9) differs from the image shape (8, 12, 10)" in _case_error(
      "nnunet_raw", root, "case_b")
  _rewrite(root, "labelsTr/case_b.nii.gz", label,
           writers.oblique_affine((2.0, 0.9, 0.7), angle=0.35))
  assert ("label spacing (2.0, 0.9, 0.7) differs from the image spacing (2.5, 0.9, 0.7)"
          in _case_error("nnunet_raw", root, "case_b"))
  shifted = affine.copy()
  shifted[:3, 3] += (0.0, 4.0, 0.0)
  _rewrite(root, "labelsTr/case_b.nii.gz", label, shifted)
  assert "label affine differs from the image affine (by up to 4 mm" in _case_error(
      "nnunet_raw", root, "case_b")


def test_channels_on_different_grids(tmp_path):
  root, truth = _nnunet(tmp_path)
  rotated = writers.oblique_affine(writers.SPACING, angle=0.9)
  _rewrite(root, "imagesTr/case_c_0001.nii.gz", truth["case_c"]["image"][..., 1], rotated)
  assert "channel 1 (T2) affine differs from the channel 0 affine" in _case_error(
      "nnunet_raw", root, "case_c")


def test_label_values_not_declared(tmp_path):
  root, truth = _nnunet(tmp_path)
  label = truth["case_a"]["label"].copy()
  label[0, 0, :2] = (5, 7)
  _rewrite(root, "labelsTr/case_a.nii.gz", label, truth["case_a"]["affine"])
  assert ("label values [5, 7] not declared in dataset.json labels {'background': 0, "
          "'organ': 1, 'lesion': 2}") in _case_error("nnunet_raw", root, "case_a")


def test_label_with_non_integer_values(tmp_path):
  root, truth = _nnunet(tmp_path)
  label = truth["case_a"]["label"].astype(np.float32)
  label[1, 2, 3] = 0.5
  _rewrite(root, "labelsTr/case_a.nii.gz", label, truth["case_a"]["affine"])
  assert _case_error("nnunet_raw", root, "case_a") == (
      "case case_a: label has non-integer values; expected integer labels [0, 1, 2]")


def test_missing_channel_and_missing_label_file(tmp_path):
  root, _ = _nnunet(tmp_path)
  os.remove(os.path.join(root, "imagesTr/case_b_0001.nii.gz"))
  assert _case_error("nnunet_raw", root, "case_b") == (
      "case case_b: channel 1 (T2) file imagesTr/case_b_0001.nii.gz is missing")
  os.remove(os.path.join(root, "labelsTr/case_c.nii.gz"))
  assert _case_error("nnunet_raw", root, "case_c") == (
      "case case_c: label file labelsTr/case_c.nii.gz is missing")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, value):
  root, truth = _nnunet(tmp_path)
  image = truth["case_a"]["image"][..., 0].copy()
  image[3, 4, 5] = value
  image[0, 0, 0] = -value
  _rewrite(root, "imagesTr/case_a_0000.nii.gz", image, truth["case_a"]["affine"])
  assert _case_error("nnunet_raw", root, "case_a") == (
      "case case_a: channel 0 (CT) has 2 NaN/inf voxel(s); expected finite intensities")


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])
def test_corrupt_and_truncated_files(tmp_path, ending):
  root = str(tmp_path / "raw")
  writers.write_nnunet_raw(root, channel_names=("CT",), file_ending=ending)
  path = os.path.join(root, f"imagesTr/case_b_0000{ending}")
  with open(path, "rb") as handle:
    blob = handle.read()
  with open(path, "wb") as handle:
    handle.write(blob[:len(blob) // 2])  # truncated
  message = _case_error("nnunet_raw", root, "case_b")
  assert message.startswith(f"case case_b: channel 0 (CT): {path}: not a readable ")
  with open(path, "wb") as handle:
    handle.write(b"\x00garbage" * 40)  # not an image at all
  assert f"{path}: not a readable " in _case_error("nnunet_raw", root, "case_b")


def test_decathlon_case_listed_but_absent_and_wrong_channel_count(tmp_path):
  root = str(tmp_path / "msd")
  truth = writers.write_decathlon(root)
  os.remove(os.path.join(root, "imagesTr/brats_002.nii.gz"))
  assert _case_error("decathlon", root, "brats_002") == (
      "case brats_002: image file imagesTr/brats_002.nii.gz is missing")
  io.write_nifti(os.path.join(root, "imagesTr/brats_003.nii.gz"),
                 np.concatenate([truth["brats_003"]["image"]] * 2, axis=-1),
                 truth["brats_003"]["affine"], channels=True)
  assert _case_error("decathlon", root, "brats_003") == (
      "case brats_003: image imagesTr/brats_003.nii.gz has 4 channel(s); dataset.json "
      "declares 2 ['FLAIR', 'T1w']")


def test_lits_volume_without_segmentation(tmp_path):
  writers.write_lits(str(tmp_path), numbers=(0, 1))
  os.remove(str(tmp_path / "Training Batch 2" / "segmentation-1.nii"))
  assert _case_error("lits", str(tmp_path), "volume-1").startswith(
      "case volume-1: label file ")


def _edit_json(root, **changes):
  path = os.path.join(root, "dataset.json")
  with open(path) as handle:
    meta = json.load(handle)
  meta.update(changes)
  with open(path, "w") as handle:
    json.dump(meta, handle)


@pytest.mark.parametrize("changes, message", [
    ({"numTraining": 4}, "numTraining is 4 but imagesTr/labelsTr hold 3 cases"),
    ({"labels": {"background": 0, "organ": 2}}, "labels must be consecutive integers 0..K-1"),
    ({"labels": {"background": 0, "tumour": [1, 2]}}, "region-based labels"),
    ({"channel_names": {"0": "CT", "2": "T2"}}, "channel_names keys must be 0..1"),
    ({"file_ending": "nii.gz"}, "file_ending must be a string such as"),
])
def test_bad_nnunet_dataset_json(tmp_path, changes, message):
  root, _ = _nnunet(tmp_path)
  _edit_json(root, **changes)
  with pytest.raises(InputError, match=message.replace("[", r"\[").replace(".", r"\.")) as error:
    raw_layouts.scan("nnunet_raw", root)
  assert "dataset.json" in str(error.value) and "\n" not in str(error.value)


def test_bad_folders_and_names(tmp_path):
  with pytest.raises(InputError, match="no dataset.json in the dataset folder"):
    raw_layouts.scan("nnunet_raw", str(tmp_path))
  with pytest.raises(InputError, match="no such folder"):
    raw_layouts.scan("decathlon", str(tmp_path / "absent"))
  with pytest.raises(InputError, match="layout 'kits': expected one of nnunet_raw, decathlon, lits"):
    raw_layouts.scan("kits", str(tmp_path))
  with pytest.raises(InputError, match="no LiTS volume-N.nii files"):
    raw_layouts.scan("lits", str(tmp_path))
  root, truth = _nnunet(tmp_path)
  writers.write_image(os.path.join(root, "imagesTr/case_d.nii.gz"), truth["case_a"]["label"],
                      truth["case_a"]["affine"])
  with pytest.raises(InputError, match=r"case_d.nii.gz: expected a name \{case\}_\{XXXX\}.nii.gz"):
    raw_layouts.scan("nnunet_raw", root)
  os.rename(os.path.join(root, "imagesTr/case_d.nii.gz"), os.path.join(root, "imagesTr/case_a_0002.nii.gz"))
  with pytest.raises(InputError, match=r"channel 2, but dataset.json declares 2 channel\(s\)"):
    raw_layouts.scan("nnunet_raw", root)
