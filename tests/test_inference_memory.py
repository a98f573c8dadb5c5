"""Bounded-memory sliding window (`medjax.inference.sliding_window`): the slab
accumulation (host and device) equals a full-size float32 blend, labels-only and
float16 outputs agree with it, and the peak memory (tracemalloc) grows with the
window and the cross-section, not with the length of the volume.
"""
import itertools
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import inference
from medjax.inference import WindowPredictor, importance_map, sliding_window, window_starts

MIX = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0]], np.float32)  # C=2 -> K=3


def _volume(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _positional_softmax(w):
  """Softmax over 3 classes of a channel mix plus a ramp along the window's first
  spatial axis: position-dependent, so every overlap and weight shows in the blend."""
  ramp = np.linspace(-1.0, 1.0, w.shape[1], dtype=np.float32).reshape(
      (1, -1) + (1,) * (w.ndim - 2))
  logits = w[..., :MIX.shape[0]] @ MIX[:w.shape[-1]] + ramp * np.float32(1.5)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _full_size_blend(predict_fn, volume, roi, overlap, mode):
  """The straightforward blend: full-size float32 sums of weighted window predictions
  and of the weights, one division (the pre-slab algorithm, kept here as the oracle)."""
  spatial = volume.shape[1:-1]
  pads = [(0, max(r - s, 0)) for r, s in zip(roi, spatial)]
  vol = np.pad(volume, [(0, 0)] + pads + [(0, 0)], constant_values=volume.min())
  padded = vol.shape[1:-1]
  weight = importance_map(roi, mode)[..., None]
  out = []
  for image in vol:
    acc = count = None
    for st in itertools.product(*[window_starts(p, r, overlap) for p, r in zip(padded, roi)]):
      sl = tuple(slice(s, s + r) for s, r in zip(st, roi))
      p = np.asarray(predict_fn(image[sl][None]), np.float32)[0]
      if acc is None:
        acc = np.zeros(padded + p.shape[-1:], np.float32)
        count = np.zeros(padded + (1,), np.float32)
      acc[sl] += p * weight
      count[sl] += weight
    out.append((acc / count)[tuple(slice(0, s) for s in spatial)])
  return np.stack(out)


# (volume (N, *S, C), roi): the slab axis is 0, then 1 (the long axis), then 2; padding
# on one axis; 2D; a window as large as the image
CASES = [
    ((1, 23, 9, 10, 2), (6, 5, 6)),
    ((2, 7, 26, 9, 1), (4, 6, 5)),
    ((1, 6, 8, 30, 2), (4, 4, 7)),
    ((1, 3, 17, 11, 2), (5, 6, 4)),
    ((2, 19, 13, 2), (6, 5)),
    ((1, 5, 6, 7, 2), (5, 6, 7)),
]
IDS = ["axis0", "axis1", "axis2", "padded", "2d", "one-window"]


# the device slab (jitted add / emit, compiled per shape) on the cases where its slicing differs
DEVICE_CASES = ("axis1", "axis2", "padded", "2d")
PARAMS = ([pytest.param(*c, "host", id=f"{i}-host") for c, i in zip(CASES, IDS)]
          + [pytest.param(*CASES[IDS.index(i)], "device", id=f"{i}-device") for i in DEVICE_CASES])


@pytest.mark.parametrize("shape, roi, accumulate", PARAMS)
def test_slab_accumulation_equals_the_full_size_float32_blend(shape, roi, accumulate):
  vol = _volume(shape)
  expected = _full_size_blend(_positional_softmax, vol, roi, 0.5, "gaussian")
  labels, probs = sliding_window(_positional_softmax, vol, roi, overlap=0.5, batch_size=3,
                                 output="both", accumulate=accumulate)
  assert probs.shape == expected.shape and probs.dtype == np.float32
  np.testing.assert_allclose(probs, expected, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert labels.shape == expected.shape[:-1] and labels.dtype == np.uint8
  np.testing.assert_array_equal(labels, probs.argmax(-1))
  # the blend is not trivial: windows disagree, so the argmax is not the same everywhere
  assert len(np.unique(labels)) > 1


def test_slab_axis_is_the_one_where_the_window_is_the_smallest_fraction():
  assert [inference.slab_axis(s[1:-1], r) for s, r in CASES] == [0, 1, 2, 1, 0, 0]
  # accumulator: the window's depth along that axis times the other (padded) dims, K floats
  assert inference.accumulator_bytes((23, 9, 10), (6, 5, 6), 3) == 4 * 3 * 6 * 9 * 10
  assert inference.accumulator_bytes((3, 17, 11), (5, 6, 4), 2) == 4 * 2 * 6 * 5 * 11


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_device_accumulation_with_jax_predictions_and_mirroring_equals_the_host(mode):
  # a jitted predictor returns jax.Arrays: flips, mean and the slab stay in jax
  jitted = jax.jit(lambda w: jax.nn.softmax(w @ jnp.asarray(MIX) + jnp.linspace(
      -1.0, 1.0, w.shape[1]).reshape(1, -1, 1, 1, 1), axis=-1))
  vol = _volume((1, 13, 9, 8, 2), 1)
  kwargs = dict(overlap=0.5, mode=mode, batch_size=4, mirror_axes=(0, 2))
  host = sliding_window(lambda w: np.asarray(jitted(w)), vol, (5, 4, 4), accumulate="host",
                        **kwargs)
  device = sliding_window(jitted, vol, (5, 4, 4), accumulate="device", **kwargs)
  auto = sliding_window(jitted, vol, (5, 4, 4), **kwargs)  # CPU predictions: host slab
  np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(auto, host, rtol=1e-6, atol=1e-7)
  labels = sliding_window(jitted, vol, (5, 4, 4), output="labels", accumulate="device", **kwargs)
  np.testing.assert_array_equal(labels, host.argmax(-1))


@pytest.mark.parametrize("accumulate", ["host", "device"])
def test_float16_probabilities_and_labels_match_the_float32_result(accumulate):
  vol = _volume((2, 15, 11, 9, 2), 2)
  roi = (6, 5, 4)
  p32 = sliding_window(_positional_softmax, vol, roi, batch_size=2, accumulate=accumulate)
  labels, p16 = sliding_window(_positional_softmax, vol, roi, batch_size=2, output="both",
                               dtype=np.float16, accumulate=accumulate)
  assert p16.dtype == np.float16 and p16.shape == p32.shape
  np.testing.assert_allclose(p16.astype(np.float32), p32, rtol=0, atol=5e-4)  # float16 spacing
  assert not np.array_equal(p16.astype(np.float32), p32)  # it really is rounded
  # the labels are the argmax of the float32 blend, taken before the cast
  np.testing.assert_array_equal(labels, p32.argmax(-1))
  np.testing.assert_array_equal(sliding_window(_positional_softmax, vol, roi, batch_size=2,
                                               output="labels"), p32.argmax(-1))


def test_window_predictor_passes_the_output_options_on():
  vol = _volume((10, 9, 8, 2), 3)
  base = WindowPredictor(_positional_softmax, (4, 4, 4), batch_size=2)
  probs = base(vol)
  labels = WindowPredictor(_positional_softmax, (4, 4, 4), batch_size=2, output="labels")(vol)
  both = WindowPredictor(_positional_softmax, (4, 4, 4), batch_size=2, output="both",
                         dtype=np.float16)(vol)
  assert probs.shape == (10, 9, 8, 3) and labels.shape == (10, 9, 8)
  np.testing.assert_array_equal(labels, probs.argmax(-1))
  np.testing.assert_array_equal(both[0], labels)
  assert both[1].dtype == np.float16
  np.testing.assert_allclose(both[1], probs, atol=5e-4)


def test_many_classes_give_int32_labels():
  vol = _volume((1, 6, 5, 1))
  k = 300
  f = lambda w: np.broadcast_to(np.arange(k, dtype=np.float32)[None, None, None], w.shape[:-1] + (k,))
  labels = sliding_window(f, vol, (4, 4), output="labels")
  assert labels.dtype == np.int32 and np.all(labels == k - 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(output="logits"), "output='logits'"),
    (dict(accumulate="gpu"), "accumulate='gpu'"),
    (dict(dtype=np.int32), "dtype=int32"),
])
def test_bad_output_options_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sliding_window(lambda w: w, _volume((1, 8, 8, 1)), (4, 4), **kwargs)


# ----------------------------------------------------------------------------- memory

def _lean_softmax(w):
  """(B, *roi, 1) -> 3-class softmax with few temporaries (what the test measures is
  the sliding window's memory, not the predictor's)."""
  logits = w * np.array([1.0, -2.0, 0.5], np.float32)
  logits -= logits.max(-1, keepdims=True)
  np.exp(logits, out=logits)
  logits /= logits.sum(-1, keepdims=True)
  return logits


def _traced_peak(fn):
  tracemalloc.start()
  try:
    out = fn()
    return out, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_peak_memory_scales_with_the_window_not_the_volume(output):
  # Two volumes with the same 24 x 24 cross-section, the second 8x longer. numpy's
  # allocations are traced by tracemalloc (the inputs exist before it starts). Beyond
  # the returned array, the peak is bounded by the slab (accumulator_bytes: window depth
  # x cross-section x K float32) plus a few batches of windows (the windows, the
  # predictions, the weighted window, the predictor's temporaries) and 64 kB of
  # bookkeeping: it does not grow with the length. The full-size blend above holds
  # ~40 bytes per voxel: 5.9 MB at the larger size, against a bound of ~0.5 MB here.
  roi, batch = (8, 12, 12), 4
  batch_bytes = batch * int(np.prod(roi)) * 3 * 4  # one batch of float32 predictions
  beyond = {}
  for length in (32, 256):
    vol = _volume((1, length, 24, 24, 1), 4)
    out, peak = _traced_peak(lambda: sliding_window(_lean_softmax, vol, roi, overlap=0.5,
                                                    batch_size=batch, output=output))
    accumulator = inference.accumulator_bytes(vol.shape[1:-1], roi, 3)
    assert accumulator == 4 * 3 * 8 * 24 * 24  # independent of the length
    beyond[length] = peak - out.nbytes
    bound = accumulator + 6 * batch_bytes + 64 * 1024
    assert beyond[length] < bound, (length, beyond[length], bound)
  # 8x the voxels: the peak beyond the output grows by far less than 2x (not 8x)
  assert beyond[256] < 2 * beyond[32], beyond
  full_size = 40 * 256 * 24 * 24
  assert beyond[256] < full_size / 8
