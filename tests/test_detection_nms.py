"""medjax.detection.nms: the jit NMS keeps exactly the boxes of the NumPy greedy NMS."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.detection.nms import batched_nms, nms, nms_numpy


def _random_boxes(n, ndim, seed, extent=40.0, quantized=False):
  rng = np.random.default_rng(seed)
  lo = rng.uniform(0, extent, (n, ndim))
  size = rng.uniform(2, 12, (n, ndim))
  boxes = np.concatenate([lo, lo + size], 1)
  scores = rng.uniform(0, 1, n)
  if quantized:  # many exact ties, and integer boxes with exact IoU ties
    boxes = np.round(boxes)
    scores = np.round(scores * 4) / 4
  return boxes.astype(np.float32), scores.astype(np.float32)


def _kept(indices, count):
  indices, count = np.asarray(indices), int(count)
  assert np.all(indices[count:] == -1)
  return indices[:count]


@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("quantized", [False, True])
def test_jit_nms_equals_numpy_greedy(ndim, quantized):
  for seed, threshold in ((0, 0.1), (1, 0.3), (2, 0.5)):
    boxes, scores = _random_boxes(150, ndim, seed, quantized=quantized)
    expected = nms_numpy(boxes, scores, iou_threshold=threshold)
    # small tiles: many tiles and several chunks of kept boxes
    got = _kept(*nms(boxes, scores, iou_threshold=threshold, tile_size=16))
    np.testing.assert_array_equal(got, expected)
    assert 1 < len(expected) < 150


def test_ties_go_to_the_lower_index_and_equal_iou_is_not_suppressed():
  box = [0, 0, 0, 4, 4, 4]
  boxes = np.array([box, box, [0, 0, 2, 4, 4, 6], [20, 20, 20, 21, 21, 21]], np.float32)
  scores = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
  # boxes 0 and 1 are identical with equal scores: 0 is kept; box 2 has IoU 32/96 = 1/3 with 0
  np.testing.assert_array_equal(nms_numpy(boxes, scores, iou_threshold=0.3), [0, 3])
  np.testing.assert_array_equal(_kept(*nms(boxes, scores, iou_threshold=0.3)), [0, 3])
  # IoU exactly 0.5 (2D: overlap 2 of union 4) is kept at threshold 0.5
  pair = np.array([[0, 0, 1, 3], [0, 1, 1, 4]], np.float32)
  np.testing.assert_array_equal(_kept(*nms(pair, np.ones(2), iou_threshold=0.5)), [0, 1])
  np.testing.assert_array_equal(_kept(*nms(pair, np.ones(2), iou_threshold=0.49)), [0])


def test_empty_input_all_suppressed_and_max_output():
  indices, count = nms(np.zeros((0, 6), np.float32), np.zeros((0,), np.float32),
                       iou_threshold=0.5, max_output=4)
  assert indices.shape == (4,) and int(count) == 0 and np.all(np.asarray(indices) == -1)
  same = np.tile(np.array([[1, 2, 3, 5, 6, 7]], np.float32), (7, 1))
  scores = np.array([0.1, 0.9, 0.3, 0.9, 0.2, 0.0, 0.5], np.float32)
  indices, count = nms(same, scores, iou_threshold=0.5, max_output=3)
  assert int(count) == 1 and np.asarray(indices).tolist() == [1, -1, -1]
  boxes, scores = _random_boxes(100, 3, 4, extent=200)
  full = nms_numpy(boxes, scores, iou_threshold=0.2)
  assert len(full) > 20
  for k in (1, 5, 20):
    got = _kept(*nms(boxes, scores, iou_threshold=0.2, max_output=k, tile_size=8))
    np.testing.assert_array_equal(got, full[:k])
    np.testing.assert_array_equal(nms_numpy(boxes, scores, iou_threshold=0.2, max_output=k),
                                  full[:k])
  wide = nms(boxes[:3], scores[:3], iou_threshold=0.2, max_output=10)[0]
  assert wide.shape == (10,)


def test_valid_mask_and_classes():
  boxes, scores = _random_boxes(120, 3, 7, extent=25)
  valid = np.random.default_rng(8).uniform(size=120) < 0.7
  classes = np.random.default_rng(9).integers(0, 3, 120)
  expected = nms_numpy(boxes, scores, iou_threshold=0.2, valid=valid, classes=classes)
  got = _kept(*batched_nms(boxes, scores, classes, iou_threshold=0.2, valid=valid))
  np.testing.assert_array_equal(got, expected)
  assert np.all(valid[got])
  per_class = np.sort(np.concatenate([
      np.nonzero(valid & (classes == c))[0][nms_numpy(boxes[valid & (classes == c)],
                                                      scores[valid & (classes == c)],
                                                      iou_threshold=0.2)]
      for c in range(3)]))
  np.testing.assert_array_equal(np.sort(got), per_class)


def test_nms_under_vmap_and_jit():
  boxes = np.stack([_random_boxes(40, 3, s)[0] for s in range(3)])
  scores = np.stack([_random_boxes(40, 3, s)[1] for s in range(3)])
  run = jax.jit(jax.vmap(lambda b, s: nms(b, s, iou_threshold=0.3, max_output=40, tile_size=8)))
  indices, counts = run(jnp.asarray(boxes), jnp.asarray(scores))
  for i in range(3):
    np.testing.assert_array_equal(_kept(indices[i], counts[i]),
                                  nms_numpy(boxes[i], scores[i], iou_threshold=0.3))
