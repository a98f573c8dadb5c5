"""Model tests, MLP and ConvNet families: the perceptron rule, MLP layer counts,
LeNet-5 / VGG-16 parameter counts and the ConvNet's global pooling head.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import abstract_init, apply, count, init, init_apply, key, normal
from medjax.models import (MLP, ConvNet, perceptron_fit, perceptron_predict,
                           perceptron_update)


# ----------------------------------------------------------------------------- ConvNet

def test_lenet5_param_count_and_shape():
  model = ConvNet.lenet5()
  x = jnp.zeros((2, 32, 32, 1))
  variables, y = init_apply(model, x)
  # C1 6*(25+1)=156, C3 16*(150+1)=2,416, F5 400*120+120=48,120, F6 120*84+84=10,164, out 84*10+10=850
  assert count(variables) == 61_706
  assert y.shape == (2, 10)


def test_vgg16_param_count():
  variables, out = abstract_init(ConvNet.vgg16(), (1, 224, 224, 3))
  assert count(variables) == 138_357_544
  assert out.shape == (1, 1000)


def test_small_vgg_with_batchnorm_runs():
  model = ConvNet(variant="vgg", num_classes=4, vgg_blocks=((4, 1), (8, 2)), dense=(16,),
                  norm="batch", dropout=0.5)
  x = normal((3, 16, 16, 1), 0)
  _, (y, _) = init_apply(model, x, train=True, mutable=["batch_stats"],
                          rngs={"dropout": key(2)})
  assert y.shape == (3, 4)


def test_convnet_global_max_pool_is_size_free_and_equals_max_of_features():
  model = ConvNet(variant="vgg", num_classes=2, vgg_blocks=((4, 1), (8, 1)), dense=(),
                  global_pool="max")
  x = normal((2, 16, 16, 1), 0)
  v, y = init_apply(model, x)
  # Dense head sees the 8 channels: 8 * 2 + 2 parameters, whatever the input size.
  assert v["params"]["head"]["kernel"].shape == (8, 2)
  y_big = apply(model, v, normal((2, 40, 24, 1), 1))
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
    init(ConvNet(variant="vgg", vgg_blocks=((4, 1),), global_pool="median"), x)


# ----------------------------------------------------------------------------- MLP, perceptron

def test_mlp_single_layer_and_deep():
  x = normal((5, 4, 4, 1), 0)
  single = MLP(hidden=(), num_classes=3)
  v, y = init_apply(single, x)
  assert count(v) == 16 * 3 + 3  # logistic regression on 16 pixels
  np.testing.assert_allclose(y,
                             x.reshape(5, -1) @ v["params"]["head"]["kernel"]
                             + v["params"]["head"]["bias"], rtol=1e-5, atol=1e-6)
  deep = MLP(hidden=(32, 16), num_classes=2, activation="sigmoid", dropout=0.5)
  v = init(deep, x)
  assert count(v) == (16 * 32 + 32) + (32 * 16 + 16) + (16 * 2 + 2)
  y_eval = apply(deep, v, x)
  y_train = apply(deep, v, x, train=True, rngs={"dropout": key(3)})
  assert y_eval.shape == y_train.shape == (5, 2)
  assert not np.allclose(y_eval, y_train)
  step = MLP(hidden=(4,), num_classes=1, activation="step")
  assert init_apply(step, x)[1].shape == (5, 1)


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
