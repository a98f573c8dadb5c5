"""Model tests across families: `bn_axis_name` reaches every BatchNorm (V-Net,
ResNet, ConvNet, FCN), so the data-parallel step synchronises the statistics.
"""
import jax
import jax.numpy as jnp
import pytest

from helpers import key
from medjax.models import FCN, ConvNet, ResNet, VNet


# ----------------------------------------------------------------------------- BatchNorm sync

@pytest.mark.parametrize("model, shape", [
    (VNet(features=(4, 8), encoder_convs=(1, 1), decoder_convs=(1,), spatial_dims=2,
          norm="batch"), (2, 8, 8, 1)),
    (ResNet(stage_sizes=(1, 1), num_classes=2, width=4), (2, 16, 16, 1)),
    (ConvNet(variant="vgg", vgg_blocks=((4, 1),), dense=(), norm="batch"), (2, 8, 8, 1)),
    (FCN(backbone_features=(2, 2, 2, 2, 2), fc_features=2, norm="batch"), (2, 32, 32, 1)),
])
def test_bn_axis_name_reaches_batchnorm(model, shape):
  # Traced (not compiled): with bn_axis_name="data" the train-mode BatchNorm
  # reduces over the named axis, which is unbound outside shard_map/pmap/vmap.
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(key(0), x), x)
  synced = model.clone(bn_axis_name="data")
  train = lambda v, x: synced.apply(v, x, train=True, mutable=["batch_stats"])
  with pytest.raises(NameError, match="data"):
    jax.eval_shape(train, variables, x)
  y, _ = jax.eval_shape(jax.vmap(train, in_axes=(None, 0), axis_name="data"), variables,
                        jax.ShapeDtypeStruct((2,) + shape, jnp.float32))
  assert y.shape[:2] == (2, shape[0])
