"""Resampling to a target spacing (medjax.data.preprocessing.resampling): numbers against scipy and by hand."""
import numpy as np
import pytest
from scipy import ndimage

from medjax.data.preprocessing import resampling


def _sample_points(old_shape, new_shape):
  """Input coordinates of the output voxel centres (centre-aligned grids)."""
  axes = [(np.arange(n) + 0.5) * (m / n) - 0.5 for n, m in zip(new_shape, old_shape)]
  return np.meshgrid(*axes, indexing="ij")


def test_resampled_shape_and_separate_axis():
  assert resampling.resampled_shape((80, 512, 500), (5.0, 0.8, 0.8), (2.5, 1.0, 0.8)) == (160, 410, 500)
  assert resampling.separate_axis((5.0, 0.8, 0.8), (5.0, 0.8, 0.8)) == 0
  assert resampling.separate_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1  # the target's coarse axis
  assert resampling.separate_axis((1.0, 1.0, 1.2), (1.0, 1.0, 1.0)) is None
  assert resampling.separate_axis((4.0, 4.0, 1.0), (4.0, 4.0, 1.0)) is None  # two coarse axes


def test_cubic_equals_scipy_map_coordinates_order3_mirror():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(7, 9, 11)).astype(np.float32)
  for new_shape in [(10, 5, 13), (10, 9, 4)]:  # the second keeps axis 1 (copied, not filtered)
    got = resampling.resample_image(image, new_shape, order=3)
    want = ndimage.map_coordinates(image.astype(np.float64), _sample_points(image.shape, new_shape),
                                   order=3, mode="mirror")
    assert got.dtype == np.float32 and got.shape == new_shape
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_linear_ramp_matches_analytically():
  # f(z, y, x) = 2 z - 3 y + 0.5 x + 7 in input voxel units, resampled 40x36x32 -> 27x50x32.
  shape, new_shape = (40, 36, 32), (27, 50, 32)
  z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
  ramp = (2 * z - 3 * y + 0.5 * x + 7).astype(np.float32)
  zq, yq, xq = _sample_points(shape, new_shape)
  clamp = lambda q, n: np.clip(q, 0, n - 1)
  want = 2 * clamp(zq, 40) - 3 * clamp(yq, 36) + 0.5 * clamp(xq, 32) + 7
  np.testing.assert_allclose(resampling.resample_image(ramp, new_shape, order=1), want, atol=1e-4)
  # Output voxel j of 50 along y samples input y = (j + 0.5) * 36 / 50 - 0.5: j = 0 -> -0.14 (clamped to 0).
  assert yq[0, 0, 0] == pytest.approx(-0.14) and yq[0, 25, 0] == pytest.approx(17.86)
  # Cubic B-splines reproduce a ramp exactly; the mirrored boundary's kink decays as 0.27^k.
  cubic = resampling.resample_image(ramp, new_shape, order=3)
  inner = (slice(6, -6), slice(9, -9), slice(8, -8))
  np.testing.assert_allclose(cubic[inner], want[inner], atol=2e-3)


def test_separate_axis_is_nearest_and_inplane_cubic():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(4, 6, 6)).astype(np.float32)
  out = resampling.resample_image(image, (8, 9, 9), order=3, separate=0)
  inplane = resampling.resample_image(image, (4, 9, 9), order=3, separate=None)
  # Each output slice is one input slice (z index 0,0,1,1,2,2,3,3), never a blend.
  np.testing.assert_allclose(out, np.repeat(inplane, 2, axis=0), atol=1e-6)


def test_slabs_give_the_same_result(monkeypatch):
  rng = np.random.default_rng(2)
  image = rng.normal(size=(12, 10, 9)).astype(np.float32)
  label = rng.integers(0, 3, size=(12, 10, 9)).astype(np.uint8)
  whole = resampling.resample_image(image, (17, 7, 11), separate=0)
  whole_labels = resampling.resample_labels(label, (17, 7, 11))
  monkeypatch.setattr(resampling, "SLAB_VOXELS", 50)  # 1 output row per slab
  np.testing.assert_array_equal(resampling.resample_image(image, (17, 7, 11), separate=0), whole)
  np.testing.assert_array_equal(resampling.resample_labels(label, (17, 7, 11)), whole_labels)


def test_overwrite_input_is_opt_in():
  image = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
  keep = image.copy()
  resampling.resample_image(image, (5, 4, 5))
  np.testing.assert_array_equal(image, keep)


def test_per_class_linear_keeps_label_set_and_geometry():
  rng = np.random.default_rng(3)
  label = rng.choice(np.array([0, 2, 5], np.uint8), size=(6, 7, 8))
  out = resampling.resample_labels(label, (9, 5, 13))
  assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 2, 5}
  # A block [4, 12) x [2, 10) in 16 x 16 pixels is the block [2, 6) x [1, 5) at half resolution.
  block = np.zeros((1, 16, 16), np.uint8)
  block[0, 4:12, 2:10] = 3
  half = resampling.resample_labels(block, (1, 8, 8))
  want = np.zeros((1, 8, 8), np.uint8)
  want[0, 2:6, 1:5] = 3
  np.testing.assert_array_equal(half, want)
  # ... and upsampling by an integer factor and back gives the labels again.
  up = resampling.resample_labels(label, (12, 14, 16))
  np.testing.assert_array_equal(resampling.resample_labels(up, label.shape), label)


def test_nearest_labels_and_tie_goes_to_lower_class():
  label = np.array([[[0, 1]]], np.uint8)
  # Output voxels sample input x = -1/6, 1/2, 7/6: nearest rounds 1/2 up.
  assert resampling.resample_labels(label, (1, 1, 3), order=0).tolist() == [[[0, 1, 1]]]
  # Linear: the middle output voxel sees 0 and 1 with weight 1/2 each -> class 0.
  assert resampling.resample_labels(label, (1, 1, 3)).tolist() == [[[0, 0, 1]]]


def test_probabilities_stay_normalised():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(5, 6, 4, 3))
  probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
  out = resampling.resample_probabilities(probs, (9, 4, 7), separate=0)
  assert out.shape == (9, 4, 7, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
  assert out.min() >= 0.0
