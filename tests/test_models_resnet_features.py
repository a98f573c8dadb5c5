"""Model tests, ResNet and deep features: torchvision parameter counts, the 3D
backbone, `return_features`, `medjax.features.extract` and the linear probe.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import abstract_init, apply, count, init, normal
from medjax import features
from medjax.models import ResNet, ResNet18, ResNet34, ResNet50, UNet


# ----------------------------------------------------------------------------- ResNet, features

def test_resnet_param_counts_match_torchvision():
  for ctor, expected in ((ResNet18, 11_689_512), (ResNet34, 21_797_672),
                         (ResNet50, 25_557_032)):
    variables, out = abstract_init(ctor(num_classes=1000), (1, 224, 224, 3))
    assert count(variables) == expected, ctor.__name__
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
  x = normal((6, 16, 16, 2), 0)
  return model, init(model, x), x


def test_resnet_return_features_and_extract():
  model, variables, x = _small_resnet()
  logits, feats = apply(model, variables, x, return_features=True)
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
  x = normal((3, 16, 16, 1), 0)
  variables = init(model, x)
  assert features.extract(model, variables, x, layer="bottleneck").shape == (3, 16)


def test_linear_probe_fits_separable_features():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=60)
  centres = rng.normal(size=(3, 5)) * 4
  feats = centres[labels] + rng.normal(size=(60, 5)) * 0.3
  probe = features.linear_probe_fit(feats, labels, l2=1e-3)
  pred = np.asarray(features.linear_probe_predict(probe, feats)).argmax(-1)
  assert (pred == labels).mean() == 1.0


# ----------------------------------------------------------------------------- torchvision padding

def test_resnet_torch_padding_same_params_and_odd_size_equivalence():
  """`padding="torch"` changes no parameter; it differs from "SAME" only where a
  strided conv sees an even size (XLA's SAME pads the extra pixel at the end):
  at 32x32 they do not (tests/test_weights_torchvision.py: torch's outputs)."""
  same = ResNet(stage_sizes=(1, 1, 1, 1), num_classes=3, width=4)
  torch_pad = same.clone(padding="torch")
  variables, _ = abstract_init(ResNet18(num_classes=1000, padding="torch"), (1, 224, 224, 3))
  assert count(variables) == 11_689_512
  x33 = normal((2, 33, 33, 3), 3)
  abstract, _ = abstract_init(same, x33.shape)  # random values without compiling init
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (0.5 + rng.random(s.shape) if path[-1].key == "var"
                       else 0.5 * rng.normal(size=s.shape)).astype(np.float32), abstract)
  both = jax.jit(lambda v, x: (same.apply(v, x), torch_pad.apply(v, x)))
  a, b = both(variables, x33)
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  a, b = both(variables, x33[:, :32, :32])
  assert float(jnp.abs(a - b).max()) > 1e-4
  with pytest.raises(ValueError, match="padding='reflect'"):
    abstract_init(same.clone(padding="reflect"), (1, 32, 32, 3))
