"""Model tests: parameter counts of the reference architectures, output shapes,
and the behaviour of the helper functions (perceptron rule, soft-tree losses,
cascade crop/paste, deep features). Big models go through `jax.eval_shape`, so
nothing of their size is materialised; real forward passes use tiny models.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax import features
from medjax.models import (MLP, FCN, CascadedFCN, ConvNet, ResNet, ResNet18, ResNet34,
                           ResNet50, SoftDecisionTree, UNet, VNet, balance_regularizer,
                           cascade_predict, crop_to_bbox, distillation_loss,
                           leaf_distillation_loss, organ_bbox, paste_from_bbox,
                           perceptron_fit, perceptron_predict, perceptron_update)
from medjax.models.fcn import Deconv2x, upsample_bilinear


def _abstract_init(model, shape, **kw):
  """Variables as ShapeDtypeStructs (nothing allocated) and the output shape."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kw), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, **kw), variables, x)
  return variables, out


def _key(seed: int):
  # "rbg" keys: XLA compiles threefry random bits slowly on CPU (~1 s per
  # initialised tensor), RngBitGenerator ~6x faster; the models don't care.
  return jax.random.key(seed, impl="rbg")


def _normal(shape, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(model, x, **kw):
  """Jitted init (one compilation instead of one per op: much faster on CPU)."""
  return jax.jit(lambda x: model.init(_key(1), x, **kw))(x)


def _apply(model, variables, x, **kw):
  return jax.jit(lambda v, x: model.apply(v, x, **kw))(variables, x)


def _init_apply(model, x, **kw):
  """Init and apply in one compiled program: `(variables, model.apply(variables, x, **kw))`."""
  def f(x):
    variables = model.init(_key(1), x)
    return variables, model.apply(variables, x, **kw)
  return jax.jit(f)(x)


def _count(variables) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


# ----------------------------------------------------------------------------- U-Net

def test_unet_original_param_count_and_valid_shape():
  variables, out = _abstract_init(UNet.original(), (1, 572, 572, 1))
  assert _count(variables) == 31_030_658
  assert out.shape == (1, 388, 388, 2)


def test_unet_same_padding_2d_runs():
  model = UNet(spatial_dims=2, features=(4, 8, 16), num_classes=3)
  x = _normal((2, 16, 16, 1), 0)
  _, y = _init_apply(model, x)
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
  variables, out = _abstract_init(UNet(spatial_dims=3, features=(16, 32, 64, 128),
                                       num_classes=2), (1, 32, 32, 32, 1))
  assert _count(variables) == 1_400_578
  assert out.shape == (1, 32, 32, 32, 2)


def test_unet3d_cicek_valid_shape_and_param_count():
  # The paper's 3D U-Net has 4 resolution levels (3 poolings): 132x132x116 -> 44x44x28.
  variables, out = _abstract_init(UNet.cicek(), (1, 132, 132, 116, 3))
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
  assert _count(variables) == 19_072_291
  no_norm, _ = _abstract_init(UNet.cicek(norm=None), (1, 132, 132, 116, 3))
  assert _count(no_norm) == 19_069_955
  params = variables["params"]
  assert "bias" not in params["upconv0"]
  assert params["down0"]["conv0"]["kernel"].shape == (3, 3, 3, 3, 32)
  assert params["upconv2"]["kernel"].shape == (2, 2, 2, 512, 512)


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
  variables, out = _abstract_init(VNet(), (1, 32, 32, 32, 1))
  assert _count(variables) == 65_175_314
  assert out.shape == (1, 32, 32, 32, 2)


def test_vnet_small_2d_batchnorm_dropout_train_step():
  model = VNet(num_classes=3, features=(4, 8, 16), encoder_convs=(1, 2, 2),
               decoder_convs=(2, 1), spatial_dims=2, norm="batch", dropout=0.1)
  x = _normal((2, 16, 16, 1), 0)
  _, (y, state) = _init_apply(model, x, train=True, mutable=["batch_stats"],
                              rngs={"dropout": _key(2)})
  assert y.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.isfinite(y)))
  assert "batch_stats" in state


def test_vnet_input_residual_tiles_input():
  # With zero conv weights and biases, the input stage is PReLU(0 + tiled input).
  model = VNet(num_classes=2, in_channels=2, features=(4, 8), encoder_convs=(1, 1),
               decoder_convs=(1,), spatial_dims=2)
  x = _normal((1, 4, 4, 2), 0)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(1), x), x)
  params = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), variables["params"])
  params["enc0"]["conv0"]["prelu_slope"] = jnp.full((4,), 0.25)
  _, state = _apply(model, {"params": params}, x, capture_intermediates=True,
                    mutable=["intermediates"])
  enc0 = state["intermediates"]["enc0"]["__call__"][0]
  tiled = jnp.concatenate([x, x], axis=-1)
  np.testing.assert_allclose(enc0, jnp.where(tiled >= 0, tiled, 0.25 * tiled), rtol=1e-6)


def test_vnet_rejects_bad_sizes():
  with pytest.raises(ValueError, match="divisible by 16"):
    _abstract_init(VNet(), (1, 30, 32, 32, 1))
  with pytest.raises(ValueError, match=r"expects \(N, \*S, 1\)"):
    _abstract_init(VNet(), (1, 32, 32, 32, 2))


# ----------------------------------------------------------------------------- FCN

def test_deconv2x_bilinear_init_is_bilinear_upsampling():
  x = _normal((1, 8, 8, 3), 0)
  m = Deconv2x(3)
  y = _apply(m, _init(m, x), x)
  assert y.shape == (1, 16, 16, 3)
  np.testing.assert_allclose(y[:, 1:-1, 1:-1], upsample_bilinear(x, 2)[:, 1:-1, 1:-1],
                             atol=1e-5)


def test_fcn_variants_shapes_and_params():
  kw = dict(num_classes=3, backbone_features=(4, 8, 8, 16, 16), fc_features=16)
  x = _normal((2, 64, 64, 1), 0)
  _, y = _init_apply(FCN(variant="8s", **kw), x)  # 8s runs every code path
  assert y.shape == (2, 64, 64, 3) and bool(jnp.all(jnp.isfinite(y)))
  counts = {}
  for variant in ("32s", "16s", "8s"):
    variables, out = _abstract_init(FCN(variant=variant, **kw), x.shape)
    assert out.shape == (2, 64, 64, 3)
    counts[variant] = _count(variables)
  # 16s adds a 4x4 deconv K->K (no bias) and score_pool4 (1x1, 16 ch -> K);
  # 8s adds another deconv and score_pool3 (1x1, 8 ch -> K).
  assert counts["16s"] - counts["32s"] == 4 * 4 * 3 * 3 + 16 * 3 + 3
  assert counts["8s"] - counts["16s"] == 4 * 4 * 3 * 3 + 8 * 3 + 3


def test_fcn_vgg16_shape_abstract():
  _, out = _abstract_init(FCN.vgg16(num_classes=21), (1, 224, 224, 3))
  assert out.shape == (1, 224, 224, 21)


# ----------------------------------------------------------------------------- ConvNet, MLP

def test_lenet5_param_count_and_shape():
  model = ConvNet.lenet5()
  x = jnp.zeros((2, 32, 32, 1))
  variables, y = _init_apply(model, x)
  # C1 6*(25+1)=156, C3 16*(150+1)=2,416, F5 400*120+120=48,120, F6 120*84+84=10,164, out 84*10+10=850
  assert _count(variables) == 61_706
  assert y.shape == (2, 10)


def test_vgg16_param_count():
  variables, out = _abstract_init(ConvNet.vgg16(), (1, 224, 224, 3))
  assert _count(variables) == 138_357_544
  assert out.shape == (1, 1000)


def test_small_vgg_with_batchnorm_runs():
  model = ConvNet(variant="vgg", num_classes=4, vgg_blocks=((4, 1), (8, 2)), dense=(16,),
                  norm="batch", dropout=0.5)
  x = _normal((3, 16, 16, 1), 0)
  _, (y, _) = _init_apply(model, x, train=True, mutable=["batch_stats"],
                          rngs={"dropout": _key(2)})
  assert y.shape == (3, 4)


def test_convnet_global_max_pool_is_size_free_and_equals_max_of_features():
  model = ConvNet(variant="vgg", num_classes=2, vgg_blocks=((4, 1), (8, 1)), dense=(),
                  global_pool="max")
  x = _normal((2, 16, 16, 1), 0)
  v, y = _init_apply(model, x)
  # Dense head sees the 8 channels: 8 * 2 + 2 parameters, whatever the input size.
  assert v["params"]["head"]["kernel"].shape == (8, 2)
  y_big = _apply(model, v, _normal((2, 40, 24, 1), 1))
  assert y_big.shape == (2, 2)
  # The head is linear in max over space of the last block's (pooled) features.
  params = v["params"]
  h = x
  for b in range(2):
    h = jax.nn.relu(jax.lax.conv_general_dilated(
        h, params[f"block{b}_conv0"]["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params[f"block{b}_conv0"]["bias"])
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  expected = h.max(axis=(1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="global_pool"):
    _init(ConvNet(variant="vgg", vgg_blocks=((4, 1),), global_pool="median"), x)


def test_mlp_single_layer_and_deep():
  x = _normal((5, 4, 4, 1), 0)
  single = MLP(hidden=(), num_classes=3)
  v, y = _init_apply(single, x)
  assert _count(v) == 16 * 3 + 3  # logistic regression on 16 pixels
  np.testing.assert_allclose(y,
                             x.reshape(5, -1) @ v["params"]["head"]["kernel"]
                             + v["params"]["head"]["bias"], rtol=1e-5, atol=1e-6)
  deep = MLP(hidden=(32, 16), num_classes=2, activation="sigmoid", dropout=0.5)
  v = _init(deep, x)
  assert _count(v) == (16 * 32 + 32) + (32 * 16 + 16) + (16 * 2 + 2)
  y_eval = _apply(deep, v, x)
  y_train = _apply(deep, v, x, train=True, rngs={"dropout": _key(3)})
  assert y_eval.shape == y_train.shape == (5, 2)
  assert not np.allclose(y_eval, y_train)
  step = MLP(hidden=(4,), num_classes=1, activation="step")
  assert _init_apply(step, x)[1].shape == (5, 1)


def test_perceptron_update_rule():
  w, b = perceptron_update(jnp.zeros(2), jnp.zeros(()), jnp.array([1.0, 2.0]), 1.0)
  np.testing.assert_allclose(w, [1.0, 2.0]); assert float(b) == 1.0  # mistake: moved
  w2, b2 = perceptron_update(w, b, jnp.array([1.0, 2.0]), 1.0)
  np.testing.assert_allclose(w2, w); assert float(b2) == float(b)  # correct: unchanged


def test_perceptron_separates_linearly_separable_set():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 2))
  margin = x @ np.array([1.0, -2.0]) + 0.3
  x, margin = x[np.abs(margin) > 0.2], margin[np.abs(margin) > 0.2]
  y = np.where(margin > 0, 1, -1)
  w, b = perceptron_fit(x, y, epochs=50)
  assert np.array_equal(np.asarray(perceptron_predict(w, b, x)), y)


# ----------------------------------------------------------------------------- ResNet, features

def test_resnet_param_counts_match_torchvision():
  for ctor, expected in ((ResNet18, 11_689_512), (ResNet34, 21_797_672),
                         (ResNet50, 25_557_032)):
    variables, out = _abstract_init(ctor(num_classes=1000), (1, 224, 224, 3))
    assert _count(variables) == expected, ctor.__name__
    assert out.shape == (1, 1000)


def test_resnet3d_backbone_shapes_abstract():
  model = ResNet18(num_classes=None, spatial_dims=3)
  x = jax.ShapeDtypeStruct((1, 64, 64, 64, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  pooled, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True),
                                 variables, x)
  assert pooled.shape == (1, 512)
  assert feats["stage3"].shape == (1, 4, 4, 4, 256)


def _small_resnet():
  model = ResNet(stage_sizes=(1, 1, 1, 1), num_classes=3, width=4, stem_kernel=3,
                 stem_pool=False)
  x = _normal((6, 16, 16, 2), 0)
  return model, _init(model, x), x


def test_resnet_return_features_and_extract():
  model, variables, x = _small_resnet()
  logits, feats = _apply(model, variables, x, return_features=True)
  assert logits.shape == (6, 3)
  assert {k: v.shape[-1] for k, v in feats.items()} == {
      "stem": 4, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32, "pooled": 32}
  for layer, channels in (("stage2", 8), ("stage4", 32)):
    f = features.extract(model, variables, x, layer=layer, batch_size=4)
    assert f.shape == (6, channels)
    np.testing.assert_allclose(f, feats[layer].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="no submodule"):
    features.extract(model, variables, x, layer="stage9")


def test_extract_from_unet_block():
  model = UNet(spatial_dims=2, features=(4, 8, 16), num_classes=2)
  x = _normal((3, 16, 16, 1), 0)
  variables = _init(model, x)
  assert features.extract(model, variables, x, layer="bottleneck").shape == (3, 16)


def test_linear_probe_fits_separable_features():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=60)
  centres = rng.normal(size=(3, 5)) * 4
  feats = centres[labels] + rng.normal(size=(60, 5)) * 0.3
  probe = features.linear_probe_fit(feats, labels, l2=1e-3)
  pred = np.asarray(features.linear_probe_predict(probe, feats)).argmax(-1)
  assert (pred == labels).mean() == 1.0


# ----------------------------------------------------------------------------- soft tree

def test_soft_tree_outputs_a_distribution():
  model = SoftDecisionTree(depth=3, num_classes=4)
  x = _normal((8, 4, 4, 1), 0)
  variables, (out, aux) = _init_apply(model, x, return_aux=True)
  assert out.shape == (8, 4)
  np.testing.assert_allclose(jnp.exp(out).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(aux["leaf_probs"].sum(-1), 1.0, rtol=1e-5)
  assert aux["path_probs"].shape == aux["split_probs"].shape == (8, 7)
  np.testing.assert_allclose(aux["path_probs"][:, 0], 1.0)  # everyone reaches the root
  # the mixture is the path-weighted sum of the leaf distributions
  mix = aux["leaf_probs"] @ jnp.exp(aux["leaf_log_dist"])
  np.testing.assert_allclose(jnp.exp(out), mix, rtol=1e-5)
  assert model.apply(variables, x, method=model.max_path_logits).shape == (8, 4)


def test_balance_regularizer_minimal_at_even_splits():
  mu = jnp.ones((4, 3))
  even = balance_regularizer({"path_probs": mu, "split_probs": jnp.full((4, 3), 0.5)}, lam=1.0)
  # nodes at depths 0, 1, 1: weights 1, 1/2, 1/2; each contributes -log(0.5)
  np.testing.assert_allclose(even, 2.0 * np.log(2.0), rtol=1e-5)
  skewed = balance_regularizer({"path_probs": mu, "split_probs": jnp.full((4, 3), 0.9)},
                               lam=1.0)
  assert float(skewed) > float(even)


def test_soft_tree_distillation_reduces_loss():
  model = SoftDecisionTree(depth=2, num_classes=3)
  x = _normal((64, 6), 0)
  teacher = 3.0 * x @ _normal((6, 3), 1)
  params = _init(model, x)["params"]

  def loss_fn(p):
    out, aux = model.apply({"params": p}, x, return_aux=True)
    return distillation_loss(out, teacher, temperature=2.0) + balance_regularizer(aux, 0.01)

  opt = optax.adam(0.05)
  state = opt.init(params)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn))
  first, _ = grad_fn(params)
  for _ in range(25):
    _, g = grad_fn(params)
    updates, state = opt.update(g, state)
    params = optax.apply_updates(params, updates)
  last, _ = grad_fn(params)
  assert float(last) < 0.7 * float(first)

  @jax.jit
  def both_losses(p):
    out, aux = model.apply({"params": p}, x, return_aux=True)
    return leaf_distillation_loss(aux, teacher, 2.0), distillation_loss(out, teacher, 2.0)
  # the paper's leaf loss upper-bounds the mixture cross-entropy (Jensen)
  leaf, mixture = both_losses(params)
  assert float(leaf) >= float(mixture) - 1e-5


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
  variables = jax.eval_shape(lambda x: model.init(_key(0), x), x)
  synced = model.clone(bn_axis_name="data")
  train = lambda v, x: synced.apply(v, x, train=True, mutable=["batch_stats"])
  with pytest.raises(NameError, match="data"):
    jax.eval_shape(train, variables, x)
  y, _ = jax.eval_shape(jax.vmap(train, in_axes=(None, 0), axis_name="data"), variables,
                        jax.ShapeDtypeStruct((2,) + shape, jnp.float32))
  assert y.shape[:2] == (2, shape[0])
