"""Model tests, U-Net and FCN families: parameter counts of the reference
architectures (Ronneberger 2015, Cicek 2016, the default 3D U-Net, FCN-VGG16),
output shapes, and the FCN's bilinear deconvolution. Big models go through
`jax.eval_shape`; real forward passes use tiny models.
"""
import jax.numpy as jnp
import numpy as np

from helpers import abstract_init, apply, count, init, init_apply, normal
from medjax.models import FCN, UNet
from medjax.models.fcn import Deconv2x, upsample_bilinear


# ----------------------------------------------------------------------------- U-Net

def test_unet_original_param_count_and_valid_shape():
  variables, out = abstract_init(UNet.original(), (1, 572, 572, 1))
  assert count(variables) == 31_030_658
  assert out.shape == (1, 388, 388, 2)


def test_unet_same_padding_2d_runs():
  model = UNet(spatial_dims=2, features=(4, 8, 16), num_classes=3)
  x = normal((2, 16, 16, 1), 0)
  _, y = init_apply(model, x)
  assert y.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.isfinite(y)))


def test_unet3d_default_param_count():
  # UNet(spatial_dims=3, features=(16, 32, 64, 128), num_classes=2), 1 input channel.
  # 3x3x3 conv ci->co with bias: 27 ci co + co; 2x2x2 up-conv: 8 ci co + co.
  #   down0      27*1*16+16 + 27*16*16+16     =     448 +   6,928 =     7,376
  #   down1      27*16*32+32 + 27*32*32+32    =  13,856 +  27,680 =    41,536
  #   down2      27*32*64+64 + 27*64*64+64    =  55,360 + 110,656 =   166,016
  #   bottleneck 27*64*128+128 + 27*128*128+128 = 221,312 + 442,496 = 663,808
  #   upconv2 8*128*64+64 = 65,600; up2 27*128*64+64 + 27*64*64+64 = 221,248 + 110,656 = 331,904
  #   upconv1 8*64*32+32  = 16,416; up1 27*64*32+32 + 27*32*32+32  =  55,328 +  27,680 =  83,008
  #   upconv0 8*32*16+16  =  4,112; up0 27*32*16+16 + 27*16*16+16  =  13,840 +   6,928 =  20,768
  #   head 16*2+2 = 34
  #   total = 878,736 (encoder) + 521,808 (decoder) + 34 = 1,400,578,
  # the count PERF.md quotes for the same architecture in PyTorch.
  variables, out = abstract_init(UNet(spatial_dims=3, features=(16, 32, 64, 128),
                                       num_classes=2), (1, 32, 32, 32, 1))
  assert count(variables) == 1_400_578
  assert out.shape == (1, 32, 32, 32, 2)


def test_unet3d_cicek_valid_shape_and_param_count():
  # The paper's 3D U-Net has 4 resolution levels (3 poolings): 132x132x116 -> 44x44x28.
  variables, out = abstract_init(UNet.cicek(), (1, 132, 132, 116, 3))
  assert out.shape == (1, 44, 44, 28, 3)
  # Cicek 2016, section 2: "The architecture has 19069955 parameters in total."
  # conv(ci, co) = 27 ci co + co; up(c) = 8 c c (no bias); channels double in each encoder level:
  #   enc   conv(3,32)+conv(32,64) + conv(64,64)+conv(64,128) + conv(128,128)+conv(128,256)
  #         + conv(256,256)+conv(256,512)                                       =  7,028,624
  #   dec   up(512) + conv(768,256)+conv(256,256) + up(256) + conv(384,128)+conv(128,128)
  #         + up(128) + conv(192,64)+conv(64,64)                                = 12,041,136
  #   head  64*3+3                                                              =        195
  # total 19,069,955, which is the count with a bias on every conv; here a conv
  # followed by batch norm has no bias (the norm's offset replaces it) and the norm
  # adds a scale: 19,069,955 - 2,336 biases + 2 * 2,336 = 19,072,291.
  assert count(variables) == 19_072_291
  no_norm, _ = abstract_init(UNet.cicek(norm=None), (1, 132, 132, 116, 3))
  assert count(no_norm) == 19_069_955
  params = variables["params"]
  assert "bias" not in params["upconv0"]
  assert params["down0"]["conv0"]["kernel"].shape == (3, 3, 3, 3, 32)
  assert params["upconv2"]["kernel"].shape == (2, 2, 2, 512, 512)


# ----------------------------------------------------------------------------- FCN

def test_deconv2x_bilinear_init_is_bilinear_upsampling():
  x = normal((1, 8, 8, 3), 0)
  m = Deconv2x(3)
  y = apply(m, init(m, x), x)
  assert y.shape == (1, 16, 16, 3)
  np.testing.assert_allclose(y[:, 1:-1, 1:-1], upsample_bilinear(x, 2)[:, 1:-1, 1:-1],
                             atol=1e-5)


def test_fcn_variants_shapes_and_params():
  kw = dict(num_classes=3, backbone_features=(4, 8, 8, 16, 16), fc_features=16)
  x = normal((2, 64, 64, 1), 0)
  _, y = init_apply(FCN(variant="8s", **kw), x)  # 8s runs every code path
  assert y.shape == (2, 64, 64, 3) and bool(jnp.all(jnp.isfinite(y)))
  counts = {}
  for variant in ("32s", "16s", "8s"):
    variables, out = abstract_init(FCN(variant=variant, **kw), x.shape)
    assert out.shape == (2, 64, 64, 3)
    counts[variant] = count(variables)
  # 16s adds a 4x4 deconv K->K (no bias) and score_pool4 (1x1, 16 ch -> K);
  # 8s adds another deconv and score_pool3 (1x1, 8 ch -> K).
  assert counts["16s"] - counts["32s"] == 4 * 4 * 3 * 3 + 16 * 3 + 3
  assert counts["8s"] - counts["16s"] == 4 * 4 * 3 * 3 + 8 * 3 + 3


def test_fcn_vgg16_shape_abstract():
  _, out = abstract_init(FCN.vgg16(num_classes=21), (1, 224, 224, 3))
  assert out.shape == (1, 224, 224, 21)
