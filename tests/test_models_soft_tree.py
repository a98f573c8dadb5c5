"""Model tests, soft decision tree (Frosst & Hinton 2017): the output mixture,
the balance regulariser and distillation from a teacher.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from helpers import init, init_apply, normal
from medjax.models import (SoftDecisionTree, balance_regularizer, distillation_loss,
                           leaf_distillation_loss)


# ----------------------------------------------------------------------------- soft tree

def test_soft_tree_outputs_a_distribution():
  model = SoftDecisionTree(depth=3, num_classes=4)
  x = normal((8, 4, 4, 1), 0)
  variables, (out, aux) = init_apply(model, x, return_aux=True)
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
  x = normal((64, 6), 0)
  teacher = 3.0 * x @ normal((6, 3), 1)
  params = init(model, x)["params"]

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
