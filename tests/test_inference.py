"""Sliding-window inference (`medjax.inference`): window placement, blending
weights, reconstruction, test-time mirroring and the batching contract.

Every predictor here is a plain numpy function of its windows, so the file runs
in a few seconds: what is tested is the tiling and the blending, not a network.
"""
import itertools
import math

import numpy as np
import pytest

from medjax import inference
from medjax.inference import importance_map, sliding_window, window_starts


def _volume(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _ramp(roi, axis, channels=1):
  """`(1, *roi, channels)`: the voxel's position inside the window along spatial `axis`."""
  shape = [1] * (len(roi) + 2)
  shape[axis + 1] = roi[axis]
  return np.broadcast_to(np.arange(roi[axis], dtype=np.float32).reshape(shape),
                         (1, *roi, channels))


def _num_windows(spatial, roi, overlap):
  padded = [max(s, r) for s, r in zip(spatial, roi)]
  return math.prod(len(window_starts(s, r, overlap)) for s, r in zip(padded, roi))


# (volume shape (N, *S, C), roi): 2D and 3D; sizes not divisible by the window; a
# window larger than the volume on some axis (padded, then cropped); window == volume.
CASES = [
    ((2, 10, 7, 3), (4, 4)),          # 2D, neither axis divisible
    ((3, 3, 9, 2), (5, 4)),           # 2D, axis 0 smaller than the window
    ((2, 5, 9, 6, 2), (3, 4, 8)),     # 3D, last axis smaller, others not divisible
    ((2, 8, 8, 8, 1), (4, 4, 4)),     # 3D, divisible
    ((1, 4, 6, 5, 3), (4, 6, 5)),     # 3D, window == volume
    ((2, 2, 3, 2, 2), (4, 5, 3)),     # 3D, smaller than the window on every axis
]
CASE_IDS = ["2d", "2d-small", "3d-small", "3d-divisible", "3d-one-window", "3d-all-small"]


# ----------------------------------------------------------------------------- window_starts

@pytest.mark.parametrize("size, roi, overlap, expected", [
    (10, 4, 0.0, [0, 3, 6]),        # 3 windows needed; spread evenly, last one flush
    (8, 4, 0.0, [0, 4]),
    (8, 4, 0.5, [0, 2, 4]),
    (10, 4, 0.5, [0, 2, 4, 6]),
    (9, 4, 0.5, [0, 2, 3, 5]),      # linspace(0, 5, 4) = 0, 1.67, 3.33, 5, rounded
    (5, 4, 0.9, [0, 1]),            # step never below 1
    (12, 4, 0.25, [0, 3, 5, 8]),    # step 3: ceil(8 / 3) + 1 = 4 windows at 0, 2.67, 5.33, 8
    (4, 4, 0.5, [0]),               # window == size
    (3, 4, 0.5, [0]),               # window larger than the size (the caller pads)
    (1, 1, 0.0, [0]),
    (5, 1, 0.0, [0, 1, 2, 3, 4]),
])
def test_window_starts_hand_values(size, roi, overlap, expected):
  assert window_starts(size, roi, overlap) == expected


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_window_starts_cover_every_voxel_without_duplicates(overlap):
  for roi in range(1, 9):
    for size in range(roi, 40):
      starts = window_starts(size, roi, overlap)
      assert starts[0] == 0 and starts[-1] == size - roi, (size, roi)
      assert all(isinstance(s, int) for s in starts)
      gaps = np.diff(starts)
      assert np.all(gaps >= 1), (size, roi, starts)  # strictly increasing
      # neighbours share at least the requested overlap (up to rounding) and never leave a hole
      step = max(int(roi * (1.0 - overlap)), 1)
      assert np.all(gaps <= step + 1) and np.all(gaps <= roi), (size, roi, starts)
      covered = np.zeros(size, int)
      for s in starts:
        covered[s:s + roi] += 1
      assert covered.min() >= 1


# ----------------------------------------------------------------------------- importance_map

@pytest.mark.parametrize("roi", [(5,), (7, 5), (5, 9, 3), (4, 6), (6, 4, 8), (1, 3)])
def test_gaussian_importance_map(roi):
  g = importance_map(roi, "gaussian")
  centre = tuple(r // 2 for r in roi)
  assert g.shape == roi and g.dtype == np.float32
  assert g[centre] == 1.0 and g.max() == 1.0
  assert np.all(g > 0)                                   # no zero weight, even at the corners
  if g.size > 1:
    assert np.sum(g == 1.0) == 1                         # the centre is the only maximum
  for axis, r in enumerate(roi):
    line = np.moveaxis(g, axis, 0)
    c = r // 2
    # symmetric about the centre voxel (odd windows: the flip of the whole map)
    for k in range(1, c + 1):
      if c + k < r:
        np.testing.assert_allclose(line[c + k], line[c - k], rtol=1e-6)
    if r % 2:
      np.testing.assert_allclose(g, np.flip(g, axis), rtol=1e-6)
    # non-increasing away from the centre
    assert np.all(np.diff(line[c:], axis=0) <= 1e-7)
    assert np.all(np.diff(line[:c + 1], axis=0) >= -1e-7)


def test_gaussian_importance_map_sigma_is_an_eighth_of_the_window():
  # 1D window of 33: sigma = 33 / 8; the Gaussian's value at distance d is exp(-d^2 / 2 sigma^2)
  g = importance_map((33,), "gaussian")
  sigma = 33 * 0.125
  for d in (1, 3, 5, 8):
    np.testing.assert_allclose(g[16 + d], np.exp(-d ** 2 / (2 * sigma ** 2)), rtol=2e-2)
  wide = importance_map((33,), "gaussian", sigma_scale=0.5)
  assert np.all(wide >= g)  # larger sigma: flatter weights


@pytest.mark.parametrize("roi", [(4,), (3, 5), (2, 3, 4)])
def test_constant_importance_map_is_ones(roi):
  c = importance_map(roi, "constant")
  assert c.shape == roi and c.dtype == np.float32
  np.testing.assert_array_equal(c, np.ones(roi, np.float32))


def test_importance_map_rejects_unknown_mode():
  with pytest.raises(ValueError, match="mode='median'"):
    importance_map((4, 4), "median")


# ----------------------------------------------------------------------------- reconstruction

@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape, roi", CASES, ids=CASE_IDS)
def test_identity_predictor_reconstructs_the_volume(shape, roi, mode, overlap, batch_size):
  vol = _volume(shape)
  out = sliding_window(lambda w: w, vol, roi, overlap=overlap, mode=mode,
                       batch_size=batch_size)
  assert out.shape == vol.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape, roi", CASES, ids=CASE_IDS)
def test_per_voxel_predictor_gives_its_value_everywhere(shape, roi, mode):
  # Any per-voxel function gives the same value in every window that covers a
  # voxel, so the blend is that value; here with K = 2C output channels.
  vol = _volume(shape, 1)
  f = lambda w: np.concatenate([np.tanh(w), w ** 2], axis=-1)
  out = sliding_window(f, vol, roi, overlap=0.5, mode=mode, batch_size=3)
  assert out.shape == vol.shape[:-1] + (2 * vol.shape[-1],) and out.dtype == np.float32
  np.testing.assert_allclose(out, f(vol), rtol=1e-5, atol=1e-6)


def test_float64_predictions_come_back_float32():
  vol = _volume((1, 6, 6, 1))
  out = sliding_window(lambda w: w.astype(np.float64), vol, (4, 4))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, vol, rtol=1e-6)


def test_images_of_a_batch_are_predicted_independently():
  vol = _volume((3, 9, 7, 2))
  f = lambda w: w + w.mean(axis=(1, 2), keepdims=True)  # depends on the whole window
  out = sliding_window(f, vol, (4, 5), overlap=0.5, batch_size=3)
  for i in range(3):
    np.testing.assert_allclose(out[i], sliding_window(f, vol[i:i + 1], (4, 5), overlap=0.5,
                                                      batch_size=3)[0], rtol=1e-6)


# ----------------------------------------------------------------------------- position-dependent predictors

@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_no_overlap_tiling_equals_hand_computed_tiles(mode):
  # 2D (8, 6) in windows of (4, 3), overlap 0: a 2 x 2 tiling; each window adds
  # 10 * (row in window) + (column in window) and the window's own mean.
  vol = _volume((2, 8, 6, 1))
  roi = (4, 3)
  pos = (10 * _ramp(roi, 0) + _ramp(roi, 1))[0]

  def f(w):
    return w + pos + w.mean(axis=(1, 2, 3), keepdims=True)

  out = sliding_window(f, vol, roi, overlap=0.0, mode=mode, batch_size=3)
  expected = np.empty_like(vol)
  for n, i, j in itertools.product(range(2), (0, 4), (0, 3)):
    tile = vol[n, i:i + 4, j:j + 3]
    expected[n, i:i + 4, j:j + 3] = tile + pos + tile.mean()
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_overlapping_windows_are_averaged_by_hand():
  # One axis of 6 voxels, windows of 4 at starts 0 and 2; the prediction is the
  # position inside the window, 0 1 2 3. Voxels 2, 3 are seen by both windows.
  vol = np.zeros((1, 6, 1, 1), np.float32)
  f = lambda w: _ramp((4, 1), 0).repeat(len(w), axis=0)
  const = sliding_window(f, vol, (4, 1), overlap=0.5, mode="constant", batch_size=2)
  np.testing.assert_allclose(const[0, :, 0, 0], [0, 1, (2 + 0) / 2, (3 + 1) / 2, 2, 3])
  g = importance_map((4, 1), "gaussian")[:, 0]
  gauss = sliding_window(f, vol, (4, 1), overlap=0.5, mode="gaussian", batch_size=2)
  blend = lambda a, b: (g[a] * a + g[b] * b) / (g[a] + g[b])  # value == position
  np.testing.assert_allclose(gauss[0, :, 0, 0], [0, 1, blend(2, 0), blend(3, 1), 2, 3],
                             rtol=1e-6)
  # voxel 2 is the centre of window 0 and the edge of window 1: the Gaussian favours
  # window 0; voxel 3 is one voxel from both centres: equal weights, the plain mean
  assert gauss[0, 2, 0, 0] > const[0, 2, 0, 0] + 0.5
  np.testing.assert_allclose(gauss[0, 3, 0, 0], const[0, 3, 0, 0], rtol=1e-6)


def test_padding_value_is_the_volume_minimum_and_is_cropped():
  # A 2 x 3 image in a 4 x 4 window: the predictor sees the padded window.
  vol = np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3, 1) + 10
  seen = []

  def f(w):
    seen.append(w.copy())
    return w

  out = sliding_window(f, vol, (4, 4), batch_size=1)
  np.testing.assert_allclose(out, vol, rtol=1e-6)
  (window,) = seen
  assert window.shape == (1, 4, 4, 1)
  np.testing.assert_array_equal(window[0, :2, :3], vol[0])
  assert np.all(window[0, 2:] == 11) and np.all(window[0, :, 3:] == 11)


# ----------------------------------------------------------------------------- mirroring

def _softmax_over_channels(w):
  logits = w @ np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0]], np.float32)  # C=2 -> K=3
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("predict", [np.tanh, _softmax_over_channels], ids=["tanh", "softmax"])
@pytest.mark.parametrize("shape, roi, mirror_axes", [
    ((2, 9, 7, 2), (4, 4), (0,)),
    ((2, 9, 7, 2), (4, 4), (1,)),
    ((2, 9, 7, 2), (4, 4), (0, 1)),
    ((2, 5, 9, 6, 2), (3, 4, 8), (0, 1, 2)),
    ((1, 5, 9, 6, 2), (3, 4, 8), (2,)),
])
def test_mirroring_a_flip_equivariant_predictor_is_a_no_op(predict, shape, roi, mirror_axes):
  vol = _volume(shape, 2)
  for mode in ("gaussian", "constant"):
    plain = sliding_window(predict, vol, roi, overlap=0.5, mode=mode, batch_size=3)
    mirrored = sliding_window(predict, vol, roi, overlap=0.5, mode=mode, batch_size=3,
                              mirror_axes=mirror_axes)
    np.testing.assert_allclose(mirrored, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain, predict(vol), rtol=1e-5, atol=1e-6)


def test_mirroring_a_window_flip_equivariant_convolution_is_a_no_op():
  # A symmetric 3-tap smoothing along axis 0 (zero-padded at the window edges):
  # not per-voxel, but it commutes with flipping the window.
  def smooth(w):
    p = np.pad(w, [(0, 0), (1, 1), (0, 0), (0, 0)])
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]

  vol = _volume((2, 11, 6, 1), 3)
  plain = sliding_window(smooth, vol, (5, 4), overlap=0.5, batch_size=2)
  for axes in ((0,), (1,), (0, 1)):
    np.testing.assert_allclose(sliding_window(smooth, vol, (5, 4), overlap=0.5, batch_size=2,
                                              mirror_axes=axes), plain, rtol=1e-5, atol=1e-6)


def test_mirroring_a_position_dependent_predictor_changes_the_result():
  # f adds the position along spatial axis 0 inside the window (0..3). Mirrored
  # on that axis, the two passes add r and 3 - r: the mean adds 1.5 everywhere.
  # Mirrored on the other axis only, nothing changes: the flip goes to the right axis.
  vol = _volume((2, 8, 6, 1), 4)
  roi = (4, 3)
  f = lambda w: w + _ramp(roi, 0)
  plain = sliding_window(f, vol, roi, overlap=0.0, mode="constant", batch_size=2)
  np.testing.assert_allclose(plain, vol + np.tile(np.arange(4.0), 2)[None, :, None, None],
                             rtol=1e-6, atol=1e-6)
  mirrored = sliding_window(f, vol, roi, overlap=0.0, mode="constant", batch_size=2,
                            mirror_axes=(0,))
  assert not np.allclose(mirrored, plain, atol=1e-3)
  np.testing.assert_allclose(mirrored, vol + 1.5, rtol=1e-6, atol=1e-6)
  other_axis = sliding_window(f, vol, roi, overlap=0.0, mode="constant", batch_size=2,
                              mirror_axes=(1,))
  np.testing.assert_allclose(other_axis, plain, rtol=1e-6, atol=1e-6)
  both = sliding_window(f, vol, roi, overlap=0.0, mode="constant", batch_size=2,
                        mirror_axes=(0, 1))
  np.testing.assert_allclose(both, vol + 1.5, rtol=1e-6, atol=1e-6)


def test_mirroring_3d_on_the_last_spatial_axis_not_the_channels():
  # Ramp along spatial axis 2 of a 3D window, 2 channels that differ: mirroring axis 2
  # averages the ramp to its mean; mirroring axes 0, 1 leaves it alone.
  vol = _volume((1, 4, 4, 6, 2), 5)
  roi = (4, 4, 6)
  f = lambda w: w * np.array([1.0, -1.0], np.float32) + _ramp(roi, 2, channels=2)
  base = vol * np.array([1.0, -1.0], np.float32)
  np.testing.assert_allclose(sliding_window(f, vol, roi, mirror_axes=(2,)), base + 2.5,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sliding_window(f, vol, roi, mirror_axes=(0, 1)),
                             base + _ramp(roi, 2, channels=2), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the batching contract

@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("mirror", ["none", "first", "all"])
@pytest.mark.parametrize("shape, roi", [CASES[2], CASES[0]], ids=["3d", "2d"])
def test_predict_fn_always_gets_exactly_batch_size_windows(shape, roi, batch_size, mirror):
  mirror_axes = {"none": (), "first": (0,), "all": tuple(range(len(roi)))}[mirror]
  vol = _volume(shape)
  calls = []

  def f(w):
    calls.append(w.shape)
    return w

  out = sliding_window(f, vol, roi, overlap=0.5, batch_size=batch_size,
                       mirror_axes=mirror_axes)
  np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-6)
  windows = _num_windows(shape[1:-1], roi, 0.5)
  expected_calls = shape[0] * math.ceil(windows / batch_size) * 2 ** len(mirror_axes)
  assert len(calls) == expected_calls
  assert set(calls) == {(batch_size, *roi, shape[-1])}


def test_padded_windows_of_the_last_batch_are_discarded():
  # 3 windows, batch of 2: the filler window must not be blended in. A predictor
  # that marks each window by its index in the batch shows which ones were used.
  vol = np.zeros((1, 8, 1, 1), np.float32)

  def f(w):
    return np.arange(len(w), dtype=np.float32).reshape(-1, 1, 1, 1) + np.zeros_like(w)

  out = sliding_window(f, vol, (4, 1), overlap=0.5, mode="constant", batch_size=2)
  # starts 0, 2, 4: windows 0 and 1 in the first batch (values 0, 1), window 2 alone (0)
  np.testing.assert_allclose(out[0, :, 0, 0], [0, 0, 0.5, 0.5, 0.5, 0.5, 0, 0])


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_overlap_raises(overlap):
  with pytest.raises(ValueError, match="overlap"):
    sliding_window(lambda w: w, _volume((1, 8, 8, 1)), (4, 4), overlap=overlap)


@pytest.mark.parametrize("roi", [(4,), (4, 4, 4), ()])
def test_roi_size_of_the_wrong_rank_raises(roi):
  with pytest.raises(ValueError, match="roi_size"):
    sliding_window(lambda w: w, _volume((1, 8, 8, 1)), roi)


def test_bad_mode_raises():
  with pytest.raises(ValueError, match="mode"):
    sliding_window(lambda w: w, _volume((1, 8, 8, 1)), (4, 4), mode="mean")


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_non_positive_roi_size_raises(mode):
  with pytest.raises(ValueError, match="roi_size"):
    sliding_window(lambda w: w, _volume((1, 6, 6, 1)), (0, 4), mode=mode)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_non_positive_batch_size_raises(batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    sliding_window(lambda w: w, _volume((1, 6, 6, 1)), (4, 4), batch_size=batch_size)


@pytest.mark.parametrize("axis", [2, -1])
def test_mirror_axes_outside_the_spatial_axes_are_not_silently_misapplied(axis):
  # A channel-mixing, position-dependent predictor: a flip of the channel axis or of
  # the batch is visible. Acceptable: a ValueError, or (for -1) the last spatial axis.
  vol = _volume((1, 6, 6, 2), 6)
  roi = (4, 4)
  f = lambda w: np.stack([w[..., 0], 2 * w[..., 1]], axis=-1) + _ramp(roi, 1, 2)
  try:
    out = sliding_window(f, vol, roi, batch_size=2, mirror_axes=(axis,))
  except ValueError as e:
    assert "mirror_axes" in str(e)
    return
  assert axis == -1
  np.testing.assert_allclose(out, sliding_window(f, vol, roi, batch_size=2, mirror_axes=(1,)),
                             rtol=1e-5, atol=1e-6)


# The cascade predictor (`inference.cascade_predict`, organ -> box -> crop ->
# stage 2 -> paste) is tested with the cascade orchestrator in test_cascade.py.


def test_window_progress_reports_each_batch_inside_the_block_only():
  calls = []
  volume = np.zeros((2, 10, 12, 1), np.float32)
  predict = lambda x: np.ones(x.shape[:-1] + (2,), np.float32)
  windows = len(inference.window_starts(10, 4, 0.5)) * len(inference.window_starts(12, 4, 0.5))
  with inference.window_progress(lambda done, total: calls.append((done, total))):
    inference.sliding_window(predict, volume, (4, 4), overlap=0.5, batch_size=4)
  per_image = [min(b + 4, windows) for b in range(0, windows, 4)]
  assert calls == [(d, 2 * windows) for d in per_image + [windows + d for d in per_image]]
  inference.sliding_window(predict, volume, (4, 4), overlap=0.5, batch_size=4)
  assert len(calls) == 2 * len(per_image)  # no reports outside the block
