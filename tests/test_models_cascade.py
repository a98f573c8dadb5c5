"""Model tests, cascaded FCNs (Christ 2016): `CascadedFCN`, the two networks as one
Flax module. The cascade rule and the crop helpers are tested in test_cascade.py."""
import jax
import jax.numpy as jnp
import pytest

from helpers import abstract_init
from medjax.models import CascadedFCN, UNet


def test_cascaded_fcn_module():
  model = CascadedFCN(spatial_dims=2, stage1_downsample=2,
                      stage2=UNet(spatial_dims=2, features=(4, 8), num_classes=2))
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  variables, out = abstract_init(model, x.shape)
  assert set(variables["params"]) == {"organ", "lesion"}
  assert out["organ"].shape == out["lesion"].shape == (1, 32, 32, 2)
  crop = jax.ShapeDtypeStruct((1, 16, 24, 1), jnp.float32)
  lesion = jax.eval_shape(lambda v, c: model.apply(v, c, method=model.lesion_logits),
                          variables, crop)
  assert lesion.shape == (1, 16, 24, 2)
  with pytest.raises(ValueError, match="stage1_downsample"):
    abstract_init(model, (1, 33, 32, 1))
