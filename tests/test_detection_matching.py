"""medjax.detection anchors, matchers, hard-negative sampling and the box coder."""
import jax
import jax.numpy as jnp
import numpy as np

from medjax.detection import anchors as A
from medjax.detection import coder, matching


def test_grid_anchors_by_hand():
  anchors = A.grid_anchors((2, 2), 4, ((4,), (8,)))
  # cell (i, j) is centred at (4 i + 2, 4 j + 2); the anchor is 4 x 8 around it
  np.testing.assert_array_equal(anchors, [[0, -2, 4, 6], [0, 2, 4, 10],
                                          [4, -2, 8, 6], [4, 2, 8, 10]])
  shapes = A.cell_anchor_sizes(((2, 3), (4,), (5, 6)))
  np.testing.assert_array_equal(shapes, [[2, 4, 5], [2, 4, 6], [3, 4, 5], [3, 4, 6]])


def test_multilevel_anchor_counts_and_order():
  sizes = (((2, 3), (2, 3), (2, 3)), ((4, 6), (4, 6), (4, 6)))
  anchors = A.multilevel_anchors((8, 16, 16), [(2, 2, 2), (4, 4, 4)], sizes)
  assert anchors.per_level == (4 * 8 * 8 * 8, 2 * 4 * 4 * 8)
  assert anchors.per_location == (8, 8)
  assert anchors.boxes.shape == (sum(anchors.per_level), 6)
  # the first level's first cell, then its second anchor shape (the last axis fastest)
  np.testing.assert_array_equal(anchors.boxes[0], [0, 0, 0, 2, 2, 2])
  np.testing.assert_array_equal(anchors.boxes[1], [0, 0, -0.5, 2, 2, 2.5])
  np.testing.assert_array_equal(anchors.boxes[anchors.per_level[0]], [0, 0, 0, 4, 4, 4])


def test_planned_anchors_beat_a_fixed_default():
  rng = np.random.default_rng(0)
  # lesions of one shape at many scales, thin along axis 0 (anisotropic voxels)
  scale = np.exp(rng.normal(0, 0.45, (400, 1)))
  sizes = scale * np.array([3.0, 10.0, 10.0]) * np.exp(rng.normal(0, 0.1, (400, 3)))
  lo = rng.uniform(0, 50, (400, 3))
  boxes = np.concatenate([lo, lo + sizes], 1)
  strides = [(2, 2, 2), (4, 4, 4)]
  default = tuple(tuple((2.0 * s, 3.0 * s) for s in stride) for stride in strides)  # RetinaUNet's
  default_iou = A.mean_best_iou(sizes, default)
  plan = A.plan_anchors(boxes, strides)
  assert default_iou < 0.45
  assert plan.mean_best_iou > 0.7
  np.testing.assert_allclose(A.mean_best_iou(A.filter_box_sizes(sizes), plan.sizes),
                             plan.mean_best_iou)
  # better than the best of 300 random base sizes
  filtered = A.filter_box_sizes(sizes)
  random_best = max(A.mean_best_iou(filtered, A.scale_sizes(
      np.sort(np.exp(rng.uniform(0, np.log(25), (3, 2))), 1), strides)) for _ in range(300))
  assert plan.mean_best_iou > random_best
  # level sizes are the base sizes times the stride ratio
  np.testing.assert_allclose(np.asarray(plan.sizes[1]), 2 * np.asarray(plan.sizes[0]))


def test_iou_matcher_by_hand():
  anchors = jnp.array([[0, 0, 4, 4], [2, 0, 6, 4], [10, 10, 14, 14]], jnp.float32)
  gt = jnp.array([[0, 0, 4, 4], [99, 99, 100, 100]], jnp.float32)  # row 1 is padding
  # IoUs with gt 0: 1, 1/3, 0
  np.testing.assert_array_equal(matching.iou_matcher(gt, 1, anchors, fg_iou=0.5, bg_iou=0.4),
                                [0, -1, -1])
  np.testing.assert_array_equal(matching.iou_matcher(gt, 1, anchors, fg_iou=0.5, bg_iou=0.3),
                                [0, matching.IGNORE, -1])
  wide = jnp.array([[0, 0, 5, 4], [0, 0, 0, 0]], jnp.float32)  # IoUs 0.8, 0.5, 0
  np.testing.assert_array_equal(
      matching.iou_matcher(wide, 1, anchors, fg_iou=0.9, bg_iou=0.4, allow_low_quality=False),
      [matching.IGNORE, matching.IGNORE, -1])
  np.testing.assert_array_equal(
      matching.iou_matcher(wide, 1, anchors, fg_iou=0.9, bg_iou=0.4), [0, matching.IGNORE, -1])
  np.testing.assert_array_equal(matching.iou_matcher(gt, 0, anchors), [-1, -1, -1])


def test_atss_by_hand():
  anchors = A.multilevel_anchors((8, 8), [(2, 2)], [((4,), (4,))])  # 16 cells, centres 2i+1
  gt = jnp.array([[1.4, 1.8, 5.4, 6.8], [0, 0, 8, 8]], jnp.float32)  # centre (3.4, 4.3), 4 x 5
  # the 4 nearest cells (3,5) (3,3) (5,5) (5,3) have IoUs 0.613 0.471 0.339 0.271:
  # mean + std = 0.5745, so only cell (3, 5) = (row 1, col 2) -> anchor 6 is positive
  matched = matching.atss_matcher(gt, 1, anchors.boxes, per_level=anchors.per_level,
                                  per_location=anchors.per_location, num_candidates=4)
  expected = np.full(16, -1)
  expected[6] = 0
  np.testing.assert_array_equal(matched, expected)
  none = matching.atss_matcher(gt, 0, anchors.boxes, per_level=anchors.per_level,
                               per_location=anchors.per_location)
  np.testing.assert_array_equal(none, np.full(16, -1))


def test_atss_assigns_an_anchor_claimed_twice_to_the_higher_iou():
  anchors = A.multilevel_anchors((8, 8), [(2, 2)], [((4,), (4,))])
  # two boxes around the anchor of cell (1, 1) = [1, 1, 5, 5]; box 1 fits it better
  gt = jnp.array([[1, 1, 6, 6], [1, 1, 5, 5.5]], jnp.float32)
  matched = np.asarray(matching.atss_matcher(gt, 2, anchors.boxes, per_level=anchors.per_level,
                                             per_location=anchors.per_location,
                                             num_candidates=4))
  assert matched[5] == 1
  assert set(np.unique(matched)) <= {-1, 0, 1}


def test_hard_negative_masks():
  matched = jnp.full((60,), -1, jnp.int32).at[jnp.array([3, 7, 11])].set(0)
  matched = matched.at[20].set(matching.IGNORE)
  probs = jnp.linspace(0, 1, 60)  # the hardest negatives are the last anchors
  sample = jax.jit(lambda m, p, k: matching.hard_negative_masks(
      m, p, k, batch_size_per_image=6, positive_fraction=0.5, pool_size=2))
  pos, neg = sample(matched, probs, jax.random.key(0, impl="rbg"))
  np.testing.assert_array_equal(np.nonzero(np.asarray(pos))[0], [3, 7, 11])
  neg = np.nonzero(np.asarray(neg))[0]
  assert len(neg) == 3 and set(neg) <= set(range(54, 60))  # 3 negatives from the 6 hardest
  pos0, neg0 = sample(jnp.full((60,), -1, jnp.int32), probs, jax.random.key(1, impl="rbg"))
  assert not np.any(pos0)
  # no box: one negative, from the pool of the 2 hardest
  assert np.sum(neg0) == 1 and np.nonzero(np.asarray(neg0))[0][0] >= 58


def test_coder_round_trip_and_clamp():
  rng = np.random.default_rng(0)
  for n in (2, 3):
    lo = rng.uniform(0, 30, (50, n))
    anchors = np.concatenate([lo, lo + rng.uniform(2, 10, (50, n))], 1).astype(np.float32)
    lo = rng.uniform(0, 30, (50, n))
    boxes = np.concatenate([lo, lo + rng.uniform(1, 20, (50, n))], 1).astype(np.float32)
    weights = (10.0,) * n + (5.0,) * n
    for xp in (np, jnp):
      deltas = coder.encode_boxes(xp.asarray(anchors), xp.asarray(boxes), weights)
      np.testing.assert_allclose(coder.decode_boxes(xp.asarray(anchors), deltas, weights), boxes,
                                 rtol=1e-5, atol=1e-4)
  anchor = np.array([[0, 0, 0, 2, 2, 2]], np.float32)
  np.testing.assert_allclose(coder.encode_boxes(anchor, np.array([[1, 0, 0, 3, 4, 2.]])),
                             [[0.5, 0.5, 0, 0, np.log(2), 0]], rtol=1e-6)
  huge = coder.decode_boxes(anchor, np.array([[0, 0, 0, 50, 0, 0]], np.float32))
  np.testing.assert_allclose(huge[0, 3] - huge[0, 0], 2 * 1000 / 16, rtol=1e-5)
