"""The `kits19` builder and the MLPerf preprocessing on a generated KiTS19-layout folder.

The reference's preprocessing (mlcommons/training `retired_benchmarks/unet3d/pytorch/
preprocess_dataset.py`, `Preprocessor.resample3d`, `normalize_intensity`,
`pad_to_min_shape`) is transcribed here with PyTorch's `interpolate`, and medjax's
implementation must give its numbers.
"""
import os

import numpy as np
import pytest

from dataset_writers import KITS_SPACING, write_kits19
from medjax.data.builders import datasets, kits19
from medjax.data.pipeline import mlperf_sampler
from medjax.data.preprocessing import kits19 as prep
from medjax.errors import InputError

torch = pytest.importorskip("torch")


def reference_preprocess(image, label, spacing, min_shape):
  """preprocess_dataset.py: resample3d -> normalize_intensity -> pad_to_min_shape."""
  from torch.nn.functional import interpolate
  image, label = image[None], label[None]
  if list(spacing) != [1.6, 1.2, 1.2]:
    new_shape = (np.array(spacing) / np.array([1.6, 1.2, 1.2]) * np.array(image.shape[1:])
                 ).astype(int).tolist()
    image = interpolate(torch.from_numpy(image[None]), size=new_shape, mode="trilinear",
                        align_corners=True)
    label = interpolate(torch.from_numpy(label[None]), size=new_shape, mode="nearest")
    image, label = np.squeeze(image.numpy(), 0), np.squeeze(label.numpy(), 0)
  image = (np.clip(image, -79.0, 304.0) - 101.0) / 76.9
  bounds = [max(0, min_shape[i] - image.shape[1:][i]) for i in range(3)]
  paddings = [(0, 0)] + [(b // 2, b - b // 2) for b in bounds]
  return (np.pad(image, paddings, mode="edge")[0].astype(np.float32),
          np.pad(label, paddings, mode="edge")[0].astype(np.uint8))


@pytest.mark.parametrize("shape, spacing", [((13, 40, 36), (3.0, 0.8, 0.9)),
                                            ((57, 23, 31), (0.5, 0.78125, 2.4)),
                                            ((20, 20, 20), (1.6, 1.2, 1.2))])
def test_preprocessing_equals_reference(shape, spacing):
  rng = np.random.default_rng(0)
  image = rng.normal(100.0, 150.0, size=shape).astype(np.float32)
  label = rng.integers(0, 3, size=shape).astype(np.uint8)
  spacing = tuple(float(np.float32(s)) for s in spacing)  # pixdim is float32
  got_image, got_label = prep.preprocess_case(image, label, spacing, min_shape=(32, 32, 32))
  want_image, want_label = reference_preprocess(image, label, spacing, (32, 32, 32))
  assert got_image.shape == want_image.shape and got_image.dtype == np.float32
  np.testing.assert_allclose(got_image, want_image, atol=2e-5, rtol=0)
  np.testing.assert_array_equal(got_label, want_label)


def test_builder_splits_values_spacing(tmp_path):
  written = write_kits19(str(tmp_path / "kits19" / "data"), (0, 1, 2, 3, 4))
  builder = datasets.prepare("kits19", str(tmp_path / "prepared"),
                             manual_dir=str(tmp_path / "kits19"),  # a clone: data/ found
                             allow_missing_cases=True, min_shape=(32, 32, 32))
  assert builder.info.metadata["cases"] == {"train": ["case_00001", "case_00002", "case_00004"],
                                            "validation": ["case_00000", "case_00003"]}
  assert len(builder.info.metadata["missing"]) == 205
  validation = builder.as_data_source(split="validation")
  example = validation[1]
  assert example["case"] == b"case_00003" or example["case"] == "case_00003"
  image, label = written["case_00003"]
  # the spacing as the NIfTI header holds it (float32): 36 x 0.9f / 1.2 truncates to 26
  pixdim = tuple(float(np.float32(s)) for s in KITS_SPACING)
  assert prep.resampled_shape((14, 40, 36), pixdim) == (26, 26, 26)
  want_image, want_label = prep.preprocess_case(image, label, pixdim, min_shape=(32, 32, 32))
  np.testing.assert_array_equal(example["image"], want_image)
  np.testing.assert_array_equal(example["label"], want_label)
  assert example["image"].shape == (32, 32, 32)  # edge-padded from (26, 26, 26)
  np.testing.assert_allclose(example["spacing"], (1.6, 1.2, 1.2))
  np.testing.assert_allclose(example["original_spacing"], KITS_SPACING)
  np.testing.assert_array_equal(example["original_shape"], (14, 40, 36))
  np.testing.assert_array_equal(example["boxes"], mlperf_sampler.foreground_boxes(want_label))
  assert set(example["boxes"][:, 0]) == {1, 2}
  # values: clipped and normalised; air is -79 HU after clipping
  assert example["image"].min() == pytest.approx((-79.0 - 101.0) / 76.9, abs=1e-6)
  kidney = example["image"][example["label"] == 1].mean() * 76.9 + 101.0
  assert 130.0 < kidney < 210.0
  assert len(builder.as_data_source(split="train")) == 3


def test_missing_cases_are_named_in_one_line(tmp_path):
  write_kits19(str(tmp_path / "data"), (0, 1))
  with pytest.raises(InputError) as e:
    datasets.prepare("kits19", str(tmp_path / "prepared"), manual_dir=str(tmp_path / "data"),
                     min_shape=(32, 32, 32))
  message = str(e.value)
  assert "\n" not in message
  assert "208 of the 210 KiTS19 cases" in message and "case_00002, case_00003" in message
  assert "and 196 more" in message and "allow_missing_cases=True" in message
  written = [f for _, _, files in os.walk(tmp_path / "prepared") for f in files
             if f == "dataset_info.json"]
  assert written == []  # nothing prepared


def test_evaluation_cases_are_the_reference_list():
  assert len(kits19.EVALUATION_CASES) == 42 == len(set(kits19.EVALUATION_CASES))
  assert kits19.EVALUATION_CASES[:3] == ("case_00000", "case_00003", "case_00005")
  assert kits19.EVALUATION_CASES[-1] == "case_00207"
  assert len(set(kits19.CASES) - set(kits19.EVALUATION_CASES)) == 168
