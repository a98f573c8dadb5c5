"""medjax.detection.boxes: IoU / GIoU by hand, instance boxes, layouts, world coordinates."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from medjax.detection import boxes as B


# ----------------------------------------------------------------------------- IoU / GIoU


def test_iou_giou_2d_by_hand():
  a = np.array([[0, 0, 2, 2]], np.float32)                      # area 4
  b = np.array([[1, 1, 3, 3], [2, 0, 3, 1], [0, 0, 2, 2]], np.float32)
  # b0: overlap 1x1, union 7, enclosing 3x3; b1: disjoint, union 5, enclosing 3x2; b2: equal
  np.testing.assert_allclose(B.box_iou(a, b), [[1 / 7, 0, 1]], rtol=1e-6)
  np.testing.assert_allclose(B.box_giou(a, b), [[1 / 7 - 2 / 9, -1 / 6, 1]], rtol=1e-6)
  assert B.box_iou(a, b).shape == (1, 3)


def test_iou_giou_3d_by_hand_numpy_and_jax():
  a = np.array([[0, 0, 0, 2, 2, 2], [0, 0, 0, 1, 1, 1]], np.float32)
  b = np.array([[1, 1, 1, 3, 3, 3], [0, 0, 0, 2, 2, 2], [5, 5, 5, 6, 6, 6]], np.float32)
  iou = np.array([[1 / 15, 1, 0], [0, 1 / 8, 0]])
  # enclosing volumes: 27, 8, 216 and 27, 8, 216
  giou = np.array([[1 / 15 - 12 / 27, 1, -(216 - 9) / 216],
                   [-(27 - 9) / 27, 1 / 8, -(216 - 2) / 216]])
  for xp in (np, jnp):
    np.testing.assert_allclose(np.asarray(B.box_iou(xp.asarray(a), xp.asarray(b))), iou,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(B.box_giou(xp.asarray(a), xp.asarray(b))), giou,
                               rtol=1e-6, atol=1e-7)
  assert isinstance(B.box_iou(a, b), np.ndarray)
  assert not isinstance(B.box_iou(jnp.asarray(a), jnp.asarray(b)), np.ndarray)
  np.testing.assert_allclose(B.aligned_box_iou(a, b[:2]), [1 / 15, 1 / 8], rtol=1e-6)
  np.testing.assert_allclose(B.aligned_box_giou(a, b[:2]), [giou[0, 0], giou[1, 1]], rtol=1e-6)


def test_iou_of_empty_boxes_is_zero():
  empty = np.array([[1, 1, 1, 1, 1, 1]], np.float32)
  assert B.box_iou(empty, empty)[0, 0] == 0
  assert B.box_volume(empty)[0] == 0


def test_centres_sizes_volume_clip_inside():
  boxes = np.array([[2, 1, 0, 5, 2, 3]], np.float32)
  np.testing.assert_array_equal(B.box_centers(boxes), [[3, 1, 1]])  # voxels 2..4, 1, 0..2
  np.testing.assert_array_equal(B.box_sizes(boxes), [[3, 1, 3]])
  assert B.box_volume(boxes)[0] == 9
  np.testing.assert_array_equal(B.boxes_from_centers(B.box_centers(boxes), B.box_sizes(boxes)),
                                boxes)
  shape = (4, 4, 4)
  np.testing.assert_array_equal(B.clip_boxes(boxes, shape), [[2, 1, 0, 4, 2, 3]])
  assert not B.boxes_inside(boxes, shape)[0]
  assert B.boxes_inside(boxes, (5, 2, 3))[0]
  assert not B.boxes_inside(np.array([[-1, 0, 0, 1, 1, 1.]]), (5, 5, 5))[0]
  with pytest.raises(ValueError, match="expected"):
    B.box_iou(np.zeros((1, 5)), np.zeros((1, 5)))


# ----------------------------------------------------------------------------- instances


def _instance_map():
  m = np.zeros((6, 4, 5), np.int16)
  m[2:5, 1, 0:3] = 1
  m[0, 3, 4] = 3  # id 2 absent
  return m


def test_boxes_from_instances():
  boxes, ids = B.boxes_from_instances(_instance_map())
  np.testing.assert_array_equal(ids, [1, 3])
  np.testing.assert_array_equal(boxes, [[2, 1, 0, 5, 2, 3], [0, 3, 4, 1, 4, 5]])
  assert boxes.dtype == np.float32
  empty, no_ids = B.boxes_from_instances(np.zeros((3, 3), np.int32))
  assert empty.shape == (0, 4) and no_ids.shape == (0,)


# ----------------------------------------------------------------------------- layouts


def _nndetection_instance_boxes(seg):
  """nnDetection's `instances_to_boxes_np` (nndet/io/transforms/instances.py), written out."""
  out = []
  for i in np.unique(seg)[1:]:
    idx = np.stack(np.nonzero(seg == i), axis=1)
    mins, maxs = idx.min(0), idx.max(0)
    box = [mins[0] - 1, mins[1] - 1, maxs[0] + 1, maxs[1] + 1]
    if seg.ndim == 3:
      box += [mins[2] - 1, maxs[2] + 1]
    out.append(box)
  return np.asarray(out, np.float32)


def test_nndetection_layout_matches_their_instance_boxes_and_round_trips():
  seg = _instance_map()
  ours, _ = B.boxes_from_instances(seg)
  theirs = _nndetection_instance_boxes(seg)
  np.testing.assert_array_equal(B.to_nndetection(ours), theirs)
  np.testing.assert_array_equal(B.from_nndetection(theirs), ours)
  # the centre is the same point in both conventions
  nn = B.to_nndetection(ours)
  np.testing.assert_array_equal((nn[:, [0, 1, 4]] + nn[:, [2, 3, 5]]) / 2, B.box_centers(ours))
  seg2d = seg[3]
  np.testing.assert_array_equal(B.to_nndetection(B.boxes_from_instances(seg2d)[0]),
                                _nndetection_instance_boxes(seg2d))
  rng = np.random.default_rng(0)
  lo = rng.uniform(0, 50, (10, 3)).astype(np.float32)
  boxes = np.concatenate([lo, lo + rng.uniform(1, 9, (10, 3)).astype(np.float32)], 1)
  np.testing.assert_allclose(B.from_nndetection(B.to_nndetection(jnp.asarray(boxes))), boxes,
                             rtol=1e-6)
  np.testing.assert_array_equal(
      B.from_nndetection(B.to_nndetection(boxes, instance_margin=False), instance_margin=False),
      boxes)


@pytest.mark.parametrize("mode,expected", [
    ("xyzxyz", [2, 1, 0, 5, 2, 3]),
    ("xxyyzz", [2, 5, 1, 2, 0, 3]),
    ("xyxyzz", [2, 1, 5, 2, 0, 3]),
    ("xyzwhd", [2, 1, 0, 3, 1, 3]),
    ("cccwhd", [3.5, 1.5, 1.5, 3, 1, 3]),
])
def test_monai_modes_3d_by_hand_and_round_trip(mode, expected):
  boxes = np.array([[2, 1, 0, 5, 2, 3]], np.float32)
  np.testing.assert_allclose(B.to_monai(boxes, mode), [expected])
  np.testing.assert_allclose(B.from_monai(np.array([expected], np.float32), mode), boxes)
  np.testing.assert_allclose(B.from_monai(B.to_monai(jnp.asarray(boxes), mode), mode), boxes)


@pytest.mark.parametrize("mode,expected", [
    ("xyxy", [2, 1, 5, 2]), ("xxyy", [2, 5, 1, 2]), ("xywh", [2, 1, 3, 1]),
    ("ccwh", [3.5, 1.5, 3, 1])])
def test_monai_modes_2d_by_hand_and_round_trip(mode, expected):
  boxes = np.array([[2, 1, 5, 2]], np.float32)
  np.testing.assert_allclose(B.to_monai(boxes, mode), [expected])
  np.testing.assert_allclose(B.from_monai(B.to_monai(boxes, mode), mode), boxes)


def test_monai_bad_mode():
  with pytest.raises(ValueError, match="cccwhd"):
    B.to_monai(np.zeros((1, 6)), "ccwh")


# ----------------------------------------------------------------------------- world coordinates


def _oblique_affine():
  t = np.deg2rad(30.0)
  rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
  affine = np.eye(4)
  affine[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
  affine[:3, 3] = [-120.0, 35.0, 410.0]
  return affine


def test_world_points_round_trip_oblique():
  affine = _oblique_affine()
  points = np.random.default_rng(1).uniform(0, 60, (20, 3))
  np.testing.assert_allclose(B.world_to_voxel(B.voxel_to_world(points, affine), affine), points,
                             atol=1e-9)
  np.testing.assert_allclose(B.voxel_to_world(np.zeros(3), affine), affine[:3, 3])


def test_world_box_is_hull_of_transformed_corners_oblique():
  affine = _oblique_affine()
  box = np.array([4, 10, 2, 9, 14, 6], np.float64)
  corners = [affine @ np.array([z, y, x, 1.0])
             for z, y, x in itertools.product((3.5, 8.5), (9.5, 13.5), (1.5, 5.5))]
  corners = np.array(corners)[:, :3]
  world = B.boxes_to_world(box, affine)
  np.testing.assert_allclose(world, np.r_[corners.min(0), corners.max(0)], atol=1e-9)
  np.testing.assert_allclose(B.centers_to_world(box, affine),
                             (affine @ np.r_[B.box_centers(box), 1])[:3], atol=1e-9)
  back = B.world_boxes_to_voxel(world, affine)
  assert np.all(back[:3] <= box[:3] + 1e-9) and np.all(back[3:] >= box[3:] - 1e-9)
  grown = (back[3:] - back[:3]) - (box[3:] - box[:3])
  assert np.all(grown[:2] > 0.5)  # the rotation mixes array axes 0 and 1: their extents grow
  np.testing.assert_allclose(back[[2, 5]], box[[2, 5]], atol=1e-9)  # axis 2 is not rotated


def test_world_box_by_hand_and_exact_round_trip_for_axis_aligned_affines():
  affine = np.diag([2.0, 1.0, 0.5, 1.0])
  affine[:3, 3] = [10, 20, 30]
  one_voxel = np.array([0, 0, 0, 1, 1, 1.0])
  np.testing.assert_allclose(B.boxes_to_world(one_voxel, affine),
                             [9, 19.5, 29.75, 11, 20.5, 30.25])
  flip_permute = np.array([[0, 0, -0.7, 100], [-0.7, 0, 0, 50], [0, 2.5, 0, -300], [0, 0, 0, 1.]])
  boxes = np.array([[4, 10, 2, 9, 14, 6], [0, 0, 0, 1, 1, 1]], np.float64)
  for a in (affine, flip_permute):
    np.testing.assert_allclose(B.world_boxes_to_voxel(B.boxes_to_world(boxes, a), a), boxes,
                               atol=1e-9)
  with pytest.raises(ValueError, match="affine"):
    B.boxes_to_world(boxes, np.eye(3))
