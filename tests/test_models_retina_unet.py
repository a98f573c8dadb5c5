"""RetinaUNet: output shapes and anchor counts, a train step in 3D and 2D (also without boxes)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import abstract_init, init, key, normal

from medjax.detection import DetectionLossConfig, detection_loss
from medjax.detection.objective import semantic_from_instances
from medjax.errors import InputError
from medjax.models import RetinaUNet, anchors_for
from medjax.train import model_factory


def test_shapes_and_anchor_counts_3d():
  model = RetinaUNet(spatial_dims=3, features=(4, 8, 16), head_levels=(1, 2), num_classes=2,
                     head_features=8, norm="instance", head_norm="instance")
  variables, out = abstract_init(model, (2, 16, 16, 16, 1))
  assert "norm0" in variables["params"]["class_head"]  # instance norm in the shared head
  anchors = anchors_for(model, (2, 16, 16, 16, 1))
  # level 1: 8^3 cells, level 2: 4^3 cells, 2 x 2 x 2 anchor shapes each
  assert anchors.per_level == (512 * 8, 64 * 8) and anchors.per_location == (8, 8)
  assert out["class_logits"].shape == (2, 4608, 2)
  assert out["box_deltas"].shape == (2, 4608, 6)
  assert out["seg_logits"].shape == (2, 16, 16, 16, 3)
  # stride 2: cell 0 is centred at 1, anchor sizes (4, 6) per axis, the last axis fastest
  np.testing.assert_array_equal(anchors.boxes[:2], [[-1, -1, -1, 3, 3, 3], [-1, -1, -2, 3, 3, 4]])
  assert anchors_for(model, (16, 16, 16)).boxes.shape == (4608, 6)


def test_shapes_anisotropic_2d_baseline_and_config_sizes():
  model = RetinaUNet(spatial_dims=2, features=(4, 8, 16), head_levels=(2,),
                     pool_sizes=((1, 2), (2, 2)), segmentation_head=False,
                     anchor_sizes=[[[2, 4], [6]]])  # lists, as from a config
  _, out = abstract_init(model, (1, 8, 32, 1))
  anchors = anchors_for(model, (8, 32))
  assert model.level_strides() == ((1, 1), (1, 2), (2, 4))
  assert anchors.per_level == (4 * 8 * 2,) and out["class_logits"].shape == (1, 64, 1)
  assert "seg_logits" not in out
  with pytest.raises(ValueError, match="divisible"):
    abstract_init(model, (1, 9, 32, 1))
  uneven = RetinaUNet(spatial_dims=2, features=(4, 8, 16), head_levels=(1, 2),
                      anchor_sizes=(((2,), (2,)), ((4, 6), (4,))))
  with pytest.raises(ValueError, match="same number"):
    abstract_init(uneven, (1, 16, 16, 1))
  with pytest.raises(ValueError, match="head_norm"):
    abstract_init(RetinaUNet(spatial_dims=2, features=(4, 8), head_levels=(1,),
                              head_norm="batch"), (1, 8, 8, 1))


def test_model_factory_builds_retina_unet():
  config = ml_collections.ConfigDict({
      "model": {"name": "retina_unet", "spatial_dims": 3, "features": [4, 8, 16],
                "head_levels": [1, 2], "anchor_sizes": [[[2, 3]] * 3, [[4, 6]] * 3]},
      "num_classes": 1, "kernels": "xla", "dtype": "float32"})
  model = model_factory.build_model(config, training=False)
  assert isinstance(model, RetinaUNet)
  _, out = abstract_init(model, (1, 8, 8, 8, 1))
  assert out["box_deltas"].shape == (1, (64 + 8) * 8, 6)
  config.model.bogus = 1
  with pytest.raises(InputError, match="bogus"):
    model_factory.build_model(config)


def test_semantic_labels_from_instances():
  instances = jnp.array([[[0, 1, 2], [2, 0, 0]]])
  classes = jnp.array([[0, 3, -1]])
  np.testing.assert_array_equal(semantic_from_instances(instances, classes),
                                [[[0, 1, 4], [4, 0, 0]]])


def _batch(shape, with_boxes=True):
  nd = len(shape)
  boxes = np.zeros((2, 3, 2 * nd), np.float32)
  instances = np.zeros((2,) + shape, np.int32)
  num_boxes = np.array([1, 2] if with_boxes else [0, 0], np.int32)
  if with_boxes:
    boxes[0, 0] = [4] * nd + [10] * nd
    boxes[1, 0] = [1] * nd + [5] * nd
    boxes[1, 1] = [9] * nd + [15] * nd
    instances[0][(slice(4, 10),) * nd] = 1
    instances[1][(slice(1, 5),) * nd] = 1
    instances[1][(slice(9, 15),) * nd] = 2
  classes = np.where(np.arange(3)[None] < num_boxes[:, None], 0, -1).astype(np.int32)
  return {"boxes": boxes, "classes": classes, "num_boxes": num_boxes, "instances": instances}


def _train_step_is_finite(model, shape, config):
  x = normal((2,) + shape + (1,))
  variables = init(model, x)
  anchors = anchors_for(model, x.shape)

  @jax.jit
  def step(params, anchors, gt, key):  # the AnchorSet is a pytree argument, not a constant
    def loss_fn(p):
      out = model.apply({"params": p}, x, train=True)
      return detection_loss(out, anchors, gt, config, rng=key)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  for with_boxes in (True, False):
    (loss, parts), grads = step(variables["params"], anchors, _batch(shape, with_boxes), key(3))
    norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
    assert np.isfinite(float(loss)) and np.isfinite(float(norm)) and float(norm) > 0
    assert all(np.isfinite(float(v)) for v in parts.values())
    if with_boxes:
      assert int(parts["num_positive"]) > 0 and float(parts["loss/regression"]) > 0
    else:
      assert int(parts["num_positive"]) == 0 and float(parts["loss/regression"]) == 0
      assert float(parts["loss/classification"]) > 0
  return parts


def test_train_step_3d_atss_hard_negatives_giou_segmentation():
  model = RetinaUNet(spatial_dims=3, features=(4, 8), head_levels=(0, 1), head_features=8,
                     head_convs=1)
  parts = _train_step_is_finite(model, (16, 16, 16), DetectionLossConfig())
  assert float(parts["loss/segmentation"]) > 0


def test_train_step_2d_retinanet_iou_focal_smooth_l1():
  model = RetinaUNet(spatial_dims=2, features=(4, 8), head_levels=(0, 1), head_features=8,
                     head_convs=1, segmentation_head=False)
  config = DetectionLossConfig(matcher="iou", classification="focal", regression="smooth_l1")
  parts = _train_step_is_finite(model, (16, 16), config)
  assert float(parts["loss/segmentation"]) == 0


def test_loss_config_errors():
  with pytest.raises(ValueError, match="matcher"):
    DetectionLossConfig(matcher="hungarian")
  model = RetinaUNet(spatial_dims=2, features=(4, 8), head_levels=(1,), head_convs=1)
  _, out = abstract_init(model, (1, 8, 8, 1))
  fake = {k: jnp.zeros(v.shape, v.dtype) for k, v in out.items()}
  gt = _batch((8, 8))
  gt = {k: v[:1] for k, v in gt.items()}
  with pytest.raises(ValueError, match="rng"):
    detection_loss(fake, anchors_for(model, (8, 8)), gt, DetectionLossConfig())
