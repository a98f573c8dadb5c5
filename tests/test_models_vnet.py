"""Model tests, V-Net (Milletari 2016): parameter count, a small 2D train step,
the input residual and the size checks.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import abstract_init, apply, count, init_apply, key, normal
from medjax.models import VNet


# ----------------------------------------------------------------------------- V-Net

def test_vnet_default_param_count_and_shape():
  # conv(k, ci, co) = k^3 ci co + co (bias) + co (per-channel PReLU slope)
  # encoder (convs per stage 1, 2, 3, 3, 3):
  #   enc0  conv(5,1,16)                                   =      2,032
  #   down0 conv(2,16,32)   =   4,160; enc1 2 x conv(5,32,32)   =    256,128
  #   down1 conv(2,32,64)   =  16,512; enc2 3 x conv(5,64,64)   =  1,536,384
  #   down2 conv(2,64,128)  =  65,792; enc3 3 x conv(5,128,128) =  6,144,768
  #   down3 conv(2,128,256) = 262,656; enc4 3 x conv(5,256,256) = 24,577,536
  #   encoder total                                        = 32,865,968
  # decoder (2x2x2 up-conv to half width + PReLU, concat skip, convs 3, 3, 2, 1):
  #   up3 8*256*128+128+128 = 262,400; dec3 3 x conv(5,256,256) = 24,577,536
  #   up2 8*256*64+64+64    = 131,200; dec2 3 x conv(5,128,128) =  6,144,768
  #   up1 8*128*32+32+32    =  32,832; dec1 2 x conv(5,64,64)   =  1,024,256
  #   up0 8*64*16+16+16     =   8,224; dec0 1 x conv(5,32,32)   =    128,064
  #   head 1x1x1 32*2+2                                    =         66
  #   decoder total                                        = 32,309,346
  # total                                                  = 65,175,314
  variables, out = abstract_init(VNet(), (1, 32, 32, 32, 1))
  assert count(variables) == 65_175_314
  assert out.shape == (1, 32, 32, 32, 2)


def test_vnet_small_2d_batchnorm_dropout_train_step():
  model = VNet(num_classes=3, features=(4, 8, 16), encoder_convs=(1, 2, 2),
               decoder_convs=(2, 1), spatial_dims=2, norm="batch", dropout=0.1)
  x = normal((2, 16, 16, 1), 0)
  _, (y, state) = init_apply(model, x, train=True, mutable=["batch_stats"],
                              rngs={"dropout": key(2)})
  assert y.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.isfinite(y)))
  assert "batch_stats" in state


def test_vnet_input_residual_tiles_input():
  # With zero conv weights and biases, the input stage is PReLU(0 + tiled input).
  model = VNet(num_classes=2, in_channels=2, features=(4, 8), encoder_convs=(1, 1),
               decoder_convs=(1,), spatial_dims=2)
  x = normal((1, 4, 4, 2), 0)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(1), x), x)
  params = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), variables["params"])
  params["enc0"]["conv0"]["prelu_slope"] = jnp.full((4,), 0.25)
  _, state = apply(model, {"params": params}, x, capture_intermediates=True,
                    mutable=["intermediates"])
  enc0 = state["intermediates"]["enc0"]["__call__"][0]
  tiled = jnp.concatenate([x, x], axis=-1)
  np.testing.assert_allclose(enc0, jnp.where(tiled >= 0, tiled, 0.25 * tiled), rtol=1e-6)


def test_vnet_rejects_bad_sizes():
  with pytest.raises(ValueError, match="divisible by 16"):
    abstract_init(VNet(), (1, 30, 32, 32, 1))
  with pytest.raises(ValueError, match=r"expects \(N, \*S, 1\)"):
    abstract_init(VNet(), (1, 32, 32, 32, 2))
