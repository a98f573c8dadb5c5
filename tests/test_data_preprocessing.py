"""preprocess_case / to_native (medjax.data.preprocessing.apply_plan): crop, normalise, resample and back."""
import json

import numpy as np
import pytest

from medjax.data.preprocessing import apply_plan, normalization
from medjax.errors import InputError

CT = {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0}


def _plan(target_spacing, normalization_specs=(CT,)):
  return {"version": 1, "target_spacing": list(target_spacing),
          "normalization": [dict(s) for s in normalization_specs], "channel_names": ["CT"]}


def _ellipsoid(shape, spacing, centre_mm, radii_mm, value=1):
  grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
  inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre_mm, radii_mm)) <= 1.0
  return inside.astype(np.uint8) * value


def _dice(a, b):
  return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _case(shape=(12, 40, 36), spacing=(3.0, 0.7, 0.9), seed=0):
  """A CT-like case: air (0) border around a body of ~40 HU, a liver-like ellipsoid
  (label 1, +30 HU) and a small lesion (label 2, -25 HU), noise of 20 HU."""
  rng = np.random.default_rng(seed)
  label = _ellipsoid(shape, spacing, (18.0, 14.0, 16.0), (12.0, 9.0, 10.0), 1)
  label[_ellipsoid(shape, spacing, (18.0, 12.0, 14.0), (4.5, 3.0, 3.0)) > 0] = 2
  image = np.zeros(shape + (1,), np.int16)
  body = (slice(1, shape[0] - 1), slice(3, shape[1] - 2), slice(2, shape[2] - 4))
  image[body] = 40
  image[..., 0] += np.where(label == 1, 30, np.where(label == 2, -25, 0)).astype(np.int16)
  image[body] += rng.normal(0, 20, image[body].shape).astype(np.int16)
  label[image[..., 0] == 0] = 0
  return image, label, spacing


def test_record_crop_and_shapes():
  image, label, spacing = _case()
  affine = np.diag([0.9, 0.7, 3.0, 1.0])[[2, 1, 0, 3]]
  case = apply_plan.preprocess_case(image, label, spacing, affine, _plan((2.0, 0.8, 0.8)))
  rec = case.record
  assert rec["original_shape"] == [12, 40, 36] and rec["original_spacing"] == [3.0, 0.7, 0.9]
  assert rec["crop_box"] == [[1, 11], [3, 38], [2, 32]] and rec["cropped_shape"] == [10, 35, 30]
  # round(10 * 3 / 2), round(35 * 0.7 / 0.8), round(30 * 0.9 / 0.8)
  assert rec["preprocessed_shape"] == [15, 31, 34] and rec["target_spacing"] == [2.0, 0.8, 0.8]
  assert rec["original_affine"] == affine.tolist()
  assert case.image.shape == (15, 31, 34, 1) and case.image.dtype == np.float32
  assert case.label.shape == (15, 31, 34) and case.label.dtype == np.uint8
  assert set(np.unique(case.label)) == {0, 1, 2}
  assert json.loads(json.dumps(rec)) == rec


def test_ct_normalisation_by_hand_without_resampling():
  image = np.array([-300, -100, 0, 50, 75, 200, 300, 1000], np.int16).reshape(1, 2, 4, 1)
  case = apply_plan.preprocess_case(image, None, (1.0, 1.0, 1.0), np.eye(4), _plan((1.0, 1.0, 1.0)))
  # clip to [-100, 200], then (x - 50) / 25.
  want = np.array([-6, -6, -2, 0, 1, 6, 6, 6], np.float32).reshape(1, 2, 4, 1)
  np.testing.assert_array_equal(case.image, want)
  # The 0 HU voxel lies inside the box of the non-zero ones: nothing is cropped.
  assert case.label is None and case.record["crop_box"] == [[0, 1], [0, 2], [0, 4]]


def test_zscore_per_image_per_channel_and_nonzero_mask():
  rng = np.random.default_rng(1)
  image = np.stack([rng.normal(300, 40, (6, 8, 8)), rng.normal(-5, 2, (6, 8, 8))], -1)
  plan = _plan((1.0, 1.0, 1.0), ({"scheme": "zscore", "use_nonzero_mask": False}, {"scheme": "zscore"}))
  out = apply_plan.preprocess_case(image, None, (1.0, 1.0, 1.0), np.eye(4), plan).image
  np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
  # A brain-like scan: zero background inside the crop box stays 0, the rest is z-scored.
  scan = np.zeros((6, 8, 8), np.float32)
  scan[1:5, 1:7, 1:7] = rng.normal(500, 50, (4, 6, 6))
  scan[1, 1, 1] = 0.0  # a hole at the border of the non-zero region (not filled: it touches the outside)
  mask = scan != 0
  normalised = normalization.normalize_channel(scan, {"scheme": "zscore", "use_nonzero_mask": True}, mask)
  assert normalised[~mask].tolist() == [0.0] * int((~mask).sum())
  assert normalised[mask].mean() == pytest.approx(0.0, abs=1e-5)
  assert normalised[mask].std() == pytest.approx(1.0, abs=1e-5)
  assert normalization.scheme_for("CT") == "ct" and normalization.scheme_for("noNorm") == "none"
  assert normalization.scheme_for("T1") == "zscore"


def test_labels_round_trip_exactly_when_the_geometry_allows():
  # Thick slices (3 mm) halved to 1.5 mm: z is the separate (nearest) axis and in-plane stays.
  image, label, spacing = _case()
  case = apply_plan.preprocess_case(image, label, spacing, np.eye(4), _plan((1.5, 0.7, 0.9)))
  assert case.record["preprocessed_shape"] == [20, 35, 30]
  np.testing.assert_array_equal(case.label, np.repeat(label[1:11, 3:38, 2:32], 2, axis=0))
  back = apply_plan.to_native(case.label, case.record)
  assert back.shape == label.shape
  np.testing.assert_array_equal(back, label)


def test_labels_round_trip_anisotropic_non_integer_factors():
  image, label, spacing = _case(shape=(14, 48, 40), spacing=(2.7, 0.73, 0.95))
  case = apply_plan.preprocess_case(image, label, spacing, np.eye(4), _plan((2.0, 0.81, 0.77)))
  back = apply_plan.to_native(case.label, case.record)
  assert back.shape == label.shape and back.dtype == label.dtype
  assert set(np.unique(back)) == {0, 1, 2}
  assert _dice(back == 1, label == 1) > 0.95
  assert _dice(back == 2, label == 2) > 0.95  # the small lesion (84 voxels; measured 0.959)
  assert (back[:, :3] == 0).all() and (back[:, -2:] == 0).all()  # outside the crop box


def test_probabilities_to_native():
  image, label, spacing = _case()
  case = apply_plan.preprocess_case(image, label, spacing, np.eye(4), _plan((2.0, 0.8, 0.8)))
  probs = np.eye(3, dtype=np.float32)[case.label] * 0.9 + 0.1 / 3
  native = apply_plan.to_native(probs, case.record, kind="probabilities")
  assert native.shape == (12, 40, 36, 3) and native.dtype == np.float32
  np.testing.assert_allclose(native.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(native[0], np.broadcast_to([1.0, 0.0, 0.0], (40, 36, 3)))
  labels = apply_plan.to_native(case.label, case.record)
  assert (native.argmax(-1) == labels).mean() > 0.99


def test_a_scalar_map_to_native_is_resampled_and_zero_outside_the_crop_box():
  """An uncertainty map on the preprocessed grid comes back on the original one: a constant
  stays that constant inside the crop box (linear resampling), 0 outside it (where the
  probabilities are a certain background), and a map of the wrong rank is refused."""
  image, label, spacing = _case()
  case = apply_plan.preprocess_case(image, label, spacing, np.eye(4), _plan((2.0, 0.8, 0.8)))
  ones = np.full(case.label.shape, 0.7, np.float32)
  native = apply_plan.to_native(ones, case.record, kind="map")
  assert native.shape == (12, 40, 36) and native.dtype == np.float32
  inside = apply_plan.to_native(np.ones(case.label.shape, np.uint8), case.record) > 0
  np.testing.assert_allclose(native[inside], 0.7, atol=1e-6)
  assert (native[0] == 0).all() and (native[:, :3] == 0).all()  # outside the crop box
  ramp = np.broadcast_to(np.linspace(0, 1, case.label.shape[1], dtype=np.float32)[:, None],
                         case.label.shape[1:])
  native_ramp = apply_plan.to_native(np.broadcast_to(ramp, case.label.shape).copy(),
                                        case.record, kind="map")
  assert np.all(np.diff(native_ramp[6, 4:-3, 10]) >= -1e-6)  # monotone along the resampled axis
  with pytest.raises(InputError, match="a map must be"):
    apply_plan.to_native(np.zeros(case.label.shape + (2,), np.float32), case.record, kind="map")


def test_preprocess_for_inference_matches_preprocess_case():
  image, label, spacing = _case()
  plan = _plan((2.0, 0.8, 0.8))
  volume, record = apply_plan.preprocess_for_inference(image[..., 0], spacing, np.eye(4), plan)
  case = apply_plan.preprocess_case(image, label, spacing, np.eye(4), plan)
  np.testing.assert_array_equal(volume, case.image)
  assert record == case.record


def test_bad_input_names_the_case():
  image, label, spacing = _case()
  plan = _plan((2.0, 0.8, 0.8))
  with pytest.raises(InputError, match=r"^liver_3: label shape \(12, 40, 35\) != image spatial shape"):
    apply_plan.preprocess_case(image, label[..., :35], spacing, np.eye(4), plan, name="liver_3")
  with pytest.raises(InputError, match="liver_3: image has 2 channels, the plan normalises 1"):
    apply_plan.preprocess_case(np.concatenate([image, image], -1), label, spacing, np.eye(4), plan,
                                  name="liver_3")
  with pytest.raises(InputError, match="liver_3: spacing .* has 2 entries"):
    apply_plan.preprocess_case(image, label, (1.0, 1.0), np.eye(4), plan, name="liver_3")
  with pytest.raises(InputError, match=r"liver_3: affine must be a finite 4x4 matrix, got shape \(3, 3\)"):
    apply_plan.preprocess_case(image, label, spacing, np.eye(3), plan, name="liver_3")
  assert apply_plan.preprocess_case(image, None, spacing, None, plan).record["original_affine"] is None
  with pytest.raises(InputError, match="to_native: array of shape"):
    apply_plan.to_native(np.zeros((3, 3, 3), np.uint8), {"preprocessed_shape": [4, 4, 4],
                            "cropped_shape": [4, 4, 4], "original_shape": [4, 4, 4],
                            "original_spacing": [1, 1, 1], "target_spacing": [1, 1, 1],
                            "crop_box": [[0, 4]] * 3})


@pytest.mark.e2e
def test_prepare_memory_bench_runs_in_a_subprocess():
  from benchmarks.memory import prepare
  image, label = prepare.synthetic_case((4, 32, 32), (0.8, 0.7, 0.7))
  assert image.dtype == np.int16 and image.min() == -1000 and 1 in label and 0 in label
  result = prepare.measure((4, 32, 32), (0.8, 0.7, 0.7), (1.6, 1.4, 0.7))
  assert result["preprocessed_shape"] == [2, 16, 32] and result["float32_bytes"] == 4 * 32 * 32 * 4
  assert result["peak_rss_bytes"] >= result["rss_before_bytes"] > result["input_bytes"]
  assert result["traced_peak_bytes"] >= 2 * 16 * 32 * 4  # at least the float32 output
