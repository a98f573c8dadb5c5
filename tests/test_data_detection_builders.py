"""Detection datasets: the example format, synthetic_nodules, nnDetection / LUNA16 / component
folders on tiny generated files (boxes, centres, diameters, world coordinates against the truth
written), and each bad input's one-line error."""
import json
import logging
import os

import detection_writers as writers
import numpy as np
import pytest

from medjax.data.builders import (datasets, detection_examples, detection_folders,
                                  detection_layouts, synthetic_nodules)
from medjax.data.phantoms import chest_ct
from medjax.errors import InputError


def _examples(data_dir, name, split="train", **kwargs):
  source = datasets.load_source(name, split, str(data_dir), **kwargs)
  return {ex["case"].decode(): ex for ex in (source[i] for i in range(len(source)))}


def _one_line(error):
  message = str(error.value)
  assert "\n" not in message
  return message


def _assert_schema(example, max_boxes=16, max_excluded=16):
  n = int(example["num_boxes"])
  assert example["image"].dtype == np.float32 and example["image"].ndim == 4
  assert example["instances"].dtype == np.int16
  assert example["instances"].shape == example["image"].shape[:3]
  assert example["boxes"].shape == (max_boxes, 6) and example["boxes"].dtype == np.float32
  assert example["classes"].shape == (max_boxes,) and example["classes"].dtype == np.int32
  assert example["centers_world"].shape == (max_boxes, 3)
  assert example["excluded_world"].shape == (max_excluded, 4)
  assert example["spacing"].shape == (3,) and example["affine"].shape == (4, 4)
  # Padding: zero boxes, class -1; instances numbered 1..n with these boxes (half-open extents).
  assert np.all(example["boxes"][n:] == 0) and np.all(example["classes"][n:] == -1)
  assert np.all(example["classes"][:n] >= 0)
  assert sorted(np.unique(example["instances"])) == list(range(n + 1))
  for i in range(n):
    where = np.argwhere(example["instances"] == i + 1)
    np.testing.assert_array_equal(example["boxes"][i], np.r_[where.min(0), where.max(0) + 1])
  assert np.all(example["excluded_world"][int(example["num_excluded"]):] == 0)


def _box_centre_world(example, i):
  centre = (example["boxes"][i, :3] + example["boxes"][i, 3:]) / 2 - 0.5
  return (example["affine"].astype(np.float64) @ np.r_[centre, 1.0])[:3]


# -------------------------------------------------------------- example format ---

def test_make_example_pads_and_derives_centres_and_diameters():
  instances = np.zeros((6, 8, 10), np.int16)
  instances[1:3, 2:6, 3:4] = 1
  instances[4:6, 0:2, 7:10] = 2
  affine = np.array([[0, 0, -0.7, 10], [0, -0.8, 0, 20], [2.5, 0, 0, -30], [0, 0, 0, 1.0]])
  example = detection_examples.make_example(
      "c", np.zeros((6, 8, 10)), instances, [0, 1], (2.5, 0.8, 0.7), affine, max_boxes=3,
      excluded_world=[[1, 2, 3, 4]], max_excluded=2)
  _assert_schema(example, max_boxes=3, max_excluded=2)
  np.testing.assert_array_equal(example["boxes"][:2], [[1, 2, 3, 3, 6, 4], [4, 0, 7, 6, 2, 10]])
  np.testing.assert_array_equal(example["classes"], [0, 1, -1])
  # Box centre (1.5, 3.5, 3.0) -> world through the array-axis affine.
  np.testing.assert_allclose(example["centers_world"][0], [10 - 0.7 * 3.0, 20 - 0.8 * 3.5,
                                                           -30 + 2.5 * 1.5])
  volume = 8 * 2.5 * 0.8 * 0.7
  np.testing.assert_allclose(example["diameters_mm"][0], (6 * volume / np.pi) ** (1 / 3),
                             rtol=1e-5)
  assert example["num_excluded"] == 1 and example["image"].shape == (6, 8, 10, 1)
  empty = detection_examples.make_example("e", np.zeros((6, 8, 10)), np.zeros((6, 8, 10)), [],
                                          (1, 1, 1), np.eye(4))
  assert empty["num_boxes"] == 0 and np.all(empty["classes"] == -1)


@pytest.mark.parametrize("classes, kwargs, expected", [
    ([0], {}, r"case c: instance ids \[2\] outside 1..1"),
    ([0, 0, 0], {}, r"case c: lesion\(s\) \[3\] have no voxel"),
    ([0, 0], {"max_boxes": 1}, r"case c: 2 lesions, more than max_boxes=1"),
    ([0, 0], {"diameters_mm": [3.0, 0.0]}, r"case c: diameters \[3.0, 0.0\] must be 2 positive"),
])
def test_make_example_rejects_bad_ground_truth(classes, kwargs, expected):
  instances = np.zeros((4, 4, 4), np.int16)
  instances[0, 0, 0], instances[3, 3, 3] = 1, 2
  with pytest.raises(InputError, match=expected) as error:
    detection_examples.make_example("c", np.zeros((4, 4, 4)), instances, classes, (1, 1, 1),
                                    np.eye(4), **kwargs)
  _one_line(error)


def test_array_axes_affine_reverses_the_file_voxel_axes():
  file_affine = writers.oblique_affine(writers.SPACING, angle=0.4)
  affine = detection_examples.array_axes_affine(file_affine)
  index = np.array([3.0, 5.0, 7.0])
  np.testing.assert_allclose((affine @ np.r_[index, 1])[:3], writers.file_world(file_affine, index))
  np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), writers.SPACING)


# ---------------------------------------------------------------- synthetic ---

def test_synthetic_nodules_builtin_configs():
  configs = {c.name: c for c in synthetic_nodules.SyntheticNodules.BUILDER_CONFIGS}
  assert configs["default"].shape == (64, 96, 96) and configs["default"].spacing == (2.0, 1.5, 1.5)
  assert dict(configs["default"].split_sizes) == {"train": 96, "validation": 24, "test": 48}
  assert dict(configs["smoke"].split_sizes) == {"train": 4, "validation": 2, "test": 2}


def test_synthetic_nodules_examples_are_the_phantom_cases(tmp_path):
  shape, sizes = (24, 48, 48), {"train": 3, "validation": 1, "test": 1}
  builder = datasets.prepare("synthetic_nodules/smoke", str(tmp_path), shape=shape,
                             split_sizes=sizes)
  meta = builder.info.metadata
  assert meta["class_names"] == ["nodule"] and meta["max_boxes"] == 16
  assert meta["spacing"] == [2.0, 1.5, 1.5] and meta["shape"] == list(shape)
  images = {}
  for split, size in sizes.items():
    examples = _examples(tmp_path, "synthetic_nodules/smoke", split, shape=shape,
                         split_sizes=sizes)
    assert sorted(examples) == meta["cases"][split] == [f"{split}_{i:05d}" for i in range(size)]
    for index, (case, example) in enumerate(sorted(examples.items())):
      _assert_schema(example)
      seed = synthetic_nodules.SEED_OFFSETS[split] + index
      drawn = chest_ct.make_case(seed, shape, (2.0, 1.5, 1.5))
      np.testing.assert_array_equal(example["image"][..., 0], drawn.image)
      np.testing.assert_array_equal(example["instances"], drawn.instances)
      np.testing.assert_allclose(example["affine"], drawn.affine, rtol=1e-6, atol=1e-4)
      n = int(example["num_boxes"])
      assert n == len(drawn.nodules) and np.all(example["classes"][:n] == 0)
      np.testing.assert_allclose(example["diameters_mm"][:n],
                                 [d.diameter_mm for d in drawn.nodules], rtol=1e-6)
      for i in range(n):
        np.testing.assert_allclose(example["centers_world"][i], _box_centre_world(example, i),
                                   atol=1e-3)
      assert example["num_excluded"] == len(drawn.small_nodules)
      for row, (centre, diameter) in zip(example["excluded_world"], drawn.small_nodules):
        np.testing.assert_allclose(row[:3], (drawn.affine @ np.r_[centre, 1])[:3], atol=1e-3)
        assert row[3] == pytest.approx(diameter)
      images[case] = example["image"]
  assert len({im.tobytes() for im in images.values()}) == len(images)  # no case shared


# ---------------------------------------------------------------- nnDetection ---

def test_nndetection_builder_boxes_classes_world_centres(tmp_path):
  raw = tmp_path / "Task100_Tiny"
  truth = writers.write_nndetection(str(raw), test_cases=("case_t",))
  train = _examples(tmp_path / "data", "nndetection_raw", manual_dir=str(raw))
  test = _examples(tmp_path / "data", "nndetection_raw", "test", manual_dir=str(raw))
  meta = detection_folders.prepared_metadata(datasets.get_builder(
      "nndetection_raw", str(tmp_path / "data"), manual_dir=str(raw)))
  assert meta["class_names"] == ["nodule", "mass"] and meta["skipped"] == []
  assert meta["cases"] == {"train": ["case_a", "case_b", "case_n"], "test": ["case_t"]}
  assert sorted(test) == ["case_t"]
  for case, example in {**train, **test}.items():
    _assert_schema(example)
    n = int(example["num_boxes"])
    np.testing.assert_array_equal(example["boxes"][:n],
                                  np.asarray(truth[case]["boxes"]).reshape(-1, 6))
    np.testing.assert_array_equal(example["classes"][:n], truth[case]["classes"])
    np.testing.assert_allclose(example["spacing"], writers.SPACING, rtol=1e-6)
    for i in range(n):
      box = np.asarray(truth[case]["boxes"][i], np.float64)
      centre = (box[:3] + box[3:]) / 2 - 0.5
      np.testing.assert_allclose(example["centers_world"][i],
                                 writers.file_world(truth[case]["affine"], centre), atol=1e-3)
      volume = np.prod(box[3:] - box[:3]) * np.prod(writers.SPACING)
      assert example["diameters_mm"][i] == pytest.approx((6 * volume / np.pi) ** (1 / 3), rel=1e-5)
  # ids 2 and 5 of case_a are renumbered 1 and 2 in increasing order
  raw_ids = truth["case_a"]["instances"]
  np.testing.assert_array_equal(train["case_a"]["instances"],
                                np.select([raw_ids == 2, raw_ids == 5], [1, 2], 0))
  assert train["case_n"]["num_boxes"] == 0


def test_nndetection_reads_dataset_yaml(tmp_path):
  writers.write_nndetection(str(tmp_path), yaml_file=True, class_names=("lesion", "mass"),
                            cases=("case_y",))
  folder = detection_layouts.scan_nndetection(str(tmp_path))
  assert folder.class_names == ("lesion", "mass")
  assert [c.case_id for c in folder.splits["train"]] == ["case_y"]
  loaded = detection_layouts.read_nndetection(folder.splits["train"][0], folder)
  assert loaded.classes == (1, 0) and loaded.image.shape == writers.SHAPE + (1,)


def _edit_json(root, case, instances):
  with open(os.path.join(root, "raw_splitted", "labelsTr", f"{case}.json"), "w") as handle:
    json.dump({"instances": instances}, handle)


@pytest.mark.parametrize("instances, expected", [
    ({"2": 1}, r"case case_a: instance ids \[5\] in labelsTr/case_a.nii.gz are missing from "
               r"labelsTr/case_a.json"),
    ({"2": 1, "5": 0, "7": 0}, r"case case_a: labelsTr/case_a.json names instance ids \[7\] absent "
                               r"from labelsTr/case_a.nii.gz"),
    ({"2": 1, "5": 3}, r"case case_a: labelsTr/case_a.json gives instance 5 the class 3; expected "
                       r"one of 0..1"),
    ({"0": 1, "5": 0}, r"case case_a: labelsTr/case_a.json instance id '0'"),
])
def test_nndetection_bad_instance_json(tmp_path, instances, expected):
  writers.write_nndetection(str(tmp_path), cases=("case_a",))
  _edit_json(str(tmp_path), "case_a", instances)
  folder = detection_layouts.scan_nndetection(str(tmp_path))
  with pytest.raises(InputError, match=expected) as error:
    detection_layouts.read_nndetection(folder.splits["train"][0], folder)
  _one_line(error)


def test_nndetection_missing_json_and_dataset_file(tmp_path):
  writers.write_nndetection(str(tmp_path), cases=("case_a",))
  os.remove(tmp_path / "raw_splitted" / "labelsTr" / "case_a.json")
  folder = detection_layouts.scan_nndetection(str(tmp_path))
  with pytest.raises(InputError, match=r"case case_a: labelsTr/case_a.json is missing") as error:
    detection_layouts.read_nndetection(folder.splits["train"][0], folder)
  _one_line(error)
  os.remove(tmp_path / "dataset.json")
  with pytest.raises(InputError, match="no dataset.json or dataset.yaml") as error:
    detection_layouts.scan_nndetection(str(tmp_path))
  _one_line(error)


def test_bad_cases_are_all_reported_then_one_error_or_skipped(tmp_path, caplog):
  raw = tmp_path / "Task100_Tiny"
  writers.write_nndetection(str(raw), cases=("case_a", "case_b", "case_n"))
  _edit_json(str(raw), "case_a", {"2": 1})  # id 5 unnamed
  _edit_json(str(raw), "case_b", {"1": 0, "3": 0})  # id 3 absent
  with caplog.at_level(logging.ERROR, logger="medjax.data"):
    with pytest.raises(InputError, match=r"2 bad case\(s\), each logged above; the first: case "
                                         r"case_a: .*skip_bad_cases=True") as error:
      _examples(tmp_path / "data", "nndetection_raw", manual_dir=str(raw))
  _one_line(error)
  lines = [r.getMessage() for r in caplog.records if r.name == "medjax.data"]
  assert len(lines) == 2 and "case case_a:" in lines[0] and "case case_b:" in lines[1]
  assert not list((tmp_path / "data").rglob("dataset_info.json"))  # nothing left prepared
  kept = _examples(tmp_path / "data", "nndetection_raw", manual_dir=str(raw), skip_bad_cases=True)
  assert sorted(kept) == ["case_n"]
  meta = detection_folders.prepared_metadata(datasets.get_builder(
      "nndetection_raw", str(tmp_path / "data"), manual_dir=str(raw), skip_bad_cases=True))
  assert [s["case"] for s in meta["skipped"]] == ["case_a", "case_b"]
  assert "missing from labelsTr/case_a.json" in meta["skipped"][0]["reason"]


# -------------------------------------------------------------------- LUNA16 ---

def test_luna16_spheres_lps_to_ras_and_excluded(tmp_path):
  raw = tmp_path / "luna"
  truth = writers.write_luna16(str(raw))
  examples = _examples(tmp_path / "data", "luna16", manual_dir=str(raw))
  meta = detection_folders.prepared_metadata(datasets.get_builder(
      "luna16", str(tmp_path / "data"), manual_dir=str(raw)))
  assert meta["subsets"] == {"1.2.3.1": 0, "1.2.3.2": 1} and meta["max_excluded"] == 320
  assert meta["class_names"] == ["nodule"]
  for uid, example in examples.items():
    _assert_schema(example, max_excluded=320)
    nodules = truth["nodules"][uid]
    assert example["num_boxes"] == len(nodules)
    np.testing.assert_allclose(example["spacing"], writers.LUNA_SPACING_XYZ[::-1], rtol=1e-6)
    for i, (index, diameter) in enumerate(nodules):
      x, y, z = writers.luna_lps(index)
      # LPS -> RAS at the file boundary: x and y negated.
      np.testing.assert_allclose(example["centers_world"][i], [-x, -y, z], atol=1e-3)
      np.testing.assert_allclose((example["affine"] @ np.r_[index, 1.0])[:3], [-x, -y, z],
                                 atol=1e-3)
      assert example["diameters_mm"][i] == pytest.approx(diameter)
      box = example["boxes"][i]
      np.testing.assert_allclose((box[:3] + box[3:]) / 2 - 0.5, index)  # a sphere about its centre
      volume = (example["instances"] == i + 1).sum() * np.prod(writers.LUNA_SPACING_XYZ)
      assert volume == pytest.approx(np.pi / 6 * diameter ** 3, rel=0.3)
    excluded = truth["excluded"][uid]
    assert example["num_excluded"] == len(excluded)
    for row, (index, diameter) in zip(example["excluded_world"], excluded):
      x, y, z = writers.luna_lps(index)
      np.testing.assert_allclose(row, [-x, -y, z, 10.0 if diameter < 0 else diameter], atol=1e-3)
  # The image is the series as stored (int16 HU), in (slice, row, column) order.
  assert examples["1.2.3.1"]["image"].shape == truth["shape"] + (1,)


def _luna_problem(tmp_path, **rows):
  writers.write_luna16(str(tmp_path), **rows)
  return detection_layouts.scan_luna16(str(tmp_path))


def test_luna16_annotation_of_an_absent_series(tmp_path):
  folder = _luna_problem(tmp_path, extra_rows=("9.9.9,1,2,3,5",))
  assert folder.orphans == (("9.9.9", "case 9.9.9: annotations.csv names series 9.9.9, which "
                                      "has no subset*/9.9.9.mhd in the folder"),)
  with pytest.raises(InputError, match=r"1 bad case\(s\).*case 9.9.9: annotations.csv names "
                                       r"series 9.9.9") as error:
    detection_folders.report_bad_cases(str(tmp_path), list(folder.orphans))
  _one_line(error)


@pytest.mark.parametrize("row, expected", [
    ("1.2.3.2,1,2,3,0", r"case 1.2.3.2: annotations.csv line 4: diameter_mm 0; expected a "
                        r"positive diameter"),
    ("1.2.3.2,1,2,-4", r"case 1.2.3.2: annotations.csv line 4 has 4 fields; expected 5"),
    ("1.2.3.2,1,2,3,4,5", r"case 1.2.3.2: annotations.csv line 4 has 6 fields; expected 5"),
    ("1.2.3.2,1,two,3,4", r"case 1.2.3.2: annotations.csv line 4: coordX, coordY, coordZ, "
                          r"diameter_mm must be numbers"),
    ("1.2.3.2,0,0,0,5", r"case 1.2.3.2: annotations.csv nodule at \(0, 0, 0\) mm \(LPS\) lies "
                        r"outside the image subset1/1.2.3.2.mhd"),
])
def test_luna16_bad_annotation_rows(tmp_path, row, expected):
  folder = _luna_problem(tmp_path, extra_rows=(row,))
  case = [c for c in folder.splits["train"] if c.case_id == "1.2.3.2"][0]
  with pytest.raises(InputError, match=expected) as error:
    detection_layouts.read_luna16(case, folder)
  _one_line(error)


def test_luna16_skips_bad_series_and_absent_series_annotations(tmp_path):
  raw = tmp_path / "luna"
  writers.write_luna16(str(raw), extra_rows=("1.2.3.1,1,2,3,-2", "4.4.4,1,2,3,5"))
  with pytest.raises(InputError, match=r"2 bad case\(s\)") as error:
    _examples(tmp_path / "data", "luna16", manual_dir=str(raw))
  _one_line(error)
  kept = _examples(tmp_path / "data", "luna16", manual_dir=str(raw), skip_bad_cases=True)
  assert sorted(kept) == ["1.2.3.2"]
  meta = detection_folders.prepared_metadata(datasets.get_builder(
      "luna16", str(tmp_path / "data"), manual_dir=str(raw), skip_bad_cases=True))
  assert sorted(s["case"] for s in meta["skipped"]) == ["1.2.3.1", "4.4.4"]


# ----------------------------------------------------- segmentation components ---

@pytest.mark.parametrize("layout, label", [("nnunet_raw", "tumour"), ("decathlon", "2")])
def test_label_components_one_lesion_per_component(tmp_path, layout, label):
  raw = tmp_path / layout
  truth = writers.write_lesion_segmentations(str(raw), layout=layout)
  examples = _examples(tmp_path / "data", "label_components", manual_dir=str(raw),
                       layout=layout, label=label)
  meta = detection_folders.prepared_metadata(datasets.get_builder(
      "label_components", str(tmp_path / "data"), manual_dir=str(raw), layout=layout,
      label=label))
  assert meta["class_names"] == ["tumour"] and meta["label_value"] == 2
  assert sorted(examples) == ["seg_a", "seg_b", "seg_c"]
  for case, example in examples.items():
    _assert_schema(example)
    n = int(example["num_boxes"])
    np.testing.assert_array_equal(example["boxes"][:n],
                                  np.asarray(truth[case]["boxes"]).reshape(-1, 6))
    for i in range(n):
      box = np.asarray(truth[case]["boxes"][i], np.float64)
      centre = (box[:3] + box[3:]) / 2 - 0.5
      np.testing.assert_allclose(example["centers_world"][i],
                                 writers.file_world(truth[case]["affine"], centre), atol=1e-3)


def test_label_components_label_must_name_one_class(tmp_path):
  writers.write_lesion_segmentations(str(tmp_path))
  with pytest.raises(InputError, match=r"2 foreground classes .*choose the lesion class") as error:
    detection_layouts.scan_components("nnunet_raw", str(tmp_path), "")
  _one_line(error)
  with pytest.raises(InputError, match=r"dataset_kwargs.label='liver': expected one of") as error:
    detection_layouts.scan_components("nnunet_raw", str(tmp_path), "liver")
  _one_line(error)
