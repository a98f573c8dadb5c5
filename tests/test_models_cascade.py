"""Model tests, cascaded FCNs (Christ 2016): every test that touches
`medjax.models.cascade` (`CascadedFCN`, `cascade_predict`, `organ_bbox`,
`crop_to_bbox`, `paste_from_bbox`) is here, so that the cascade refactor of
issue 8 adapts them in one place.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import _abstract_init
from medjax.models import (CascadedFCN, UNet, cascade_predict, crop_to_bbox, organ_bbox,
                           paste_from_bbox)


# ----------------------------------------------------------------------------- cascade

def test_organ_bbox_crop_paste_roundtrip():
  mask = np.zeros((10, 12), bool)
  mask[3:5, 4:9] = True
  assert organ_bbox(mask, 0) == (slice(3, 5), slice(4, 9))
  assert organ_bbox(mask, 2) == (slice(1, 7), slice(2, 11))
  assert organ_bbox(mask, (4, 10)) == (slice(0, 9), slice(0, 12))  # clipped
  assert organ_bbox(np.zeros((4, 4)), 3) is None
  image = np.arange(10 * 12 * 2).reshape(10, 12, 2)
  bbox = organ_bbox(mask, 1)
  crop = crop_to_bbox(image, bbox)
  assert crop.shape == (4, 7, 2)
  pasted = paste_from_bbox(crop, bbox, (10, 12), fill=-1)
  assert pasted.shape == (10, 12, 2)
  np.testing.assert_array_equal(pasted[bbox], image[bbox])
  outside = np.ones((10, 12), bool)
  outside[bbox] = False
  assert np.all(pasted[outside] == -1)


def _indicator_logits(x, channel):
  """Two-class logits that mark voxels where channel `channel` of x is > 0.5."""
  on = (x[..., channel] > 0.5).astype(jnp.float32)
  return jnp.stack([1.0 - on, on], axis=-1)


def test_cascade_predict_removes_lesions_outside_organ():
  organ = np.zeros((20, 24), bool)
  organ[4:12, 6:16] = True
  lesion = np.zeros((20, 24), bool)
  lesion[6:8, 8:10] = True      # inside the organ: kept
  lesion[12:14, 10:12] = True   # inside the margin box but outside the organ: removed
  lesion[17:19, 20:22] = True   # far outside the box: never seen by stage 2
  image = np.stack([organ, lesion], axis=-1).astype(np.float32)
  seen = []

  def stage2(crop):
    seen.append(crop.shape)
    return _indicator_logits(crop, 1)

  labels = cascade_predict(lambda x: _indicator_logits(x, 0), stage2, image, margin=2,
                           multiple=8)
  expected = np.where(organ, 1, 0)
  expected[6:8, 8:10] = 2
  np.testing.assert_array_equal(labels, expected)
  # box (2:14, 4:18) = 12 x 14, edge-padded to multiples of 8
  assert seen == [(1, 16, 16, 2)]
  empty = cascade_predict(lambda x: _indicator_logits(x, 0), stage2,
                          np.zeros((8, 8, 2), np.float32))
  assert not empty.any() and len(seen) == 1


def test_cascaded_fcn_module():
  model = CascadedFCN(spatial_dims=2, stage1_downsample=2,
                      stage2=UNet(spatial_dims=2, features=(4, 8), num_classes=2))
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  variables, out = _abstract_init(model, x.shape)
  assert set(variables["params"]) == {"organ", "lesion"}
  assert out["organ"].shape == out["lesion"].shape == (1, 32, 32, 2)
  crop = jax.ShapeDtypeStruct((1, 16, 24, 1), jnp.float32)
  lesion = jax.eval_shape(lambda v, c: model.apply(v, c, method=model.lesion_logits),
                          variables, crop)
  assert lesion.shape == (1, 16, 24, 2)
  with pytest.raises(ValueError, match="stage1_downsample"):
    _abstract_init(model, (1, 33, 32, 1))
