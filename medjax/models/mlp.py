"""From the formal neuron to deep multilayer perceptrons.

A formal neuron (McCulloch & Pitts 1943) computes `y = f(w . x + b)`. With a
step function `f` and Rosenblatt's (1958) learning rule it is the perceptron;
with a sigmoid/softmax and the cross-entropy loss it is logistic regression;
stacking layers of such units with a differentiable `f` and training them by
backpropagation (Rumelhart, Hinton & Williams 1986) gives the MLP.

| `hidden`          | network                                                    |
|-------------------|------------------------------------------------------------|
| `()`              | one layer `x -> W x + b` (logistic regression / perceptron)|
| `(h1, ..., hL)`   | L hidden layers `Dense(h_i) -> f -> dropout`, then `Dense(K)` |

Images are flattened: `(N, *S, C) -> (N, prod(S) * C)`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import layers


def heaviside(x: jax.Array) -> jax.Array:
  """The formal neuron's step function: 1 where x >= 0 else 0 (zero gradient)."""
  return (x >= 0).astype(x.dtype)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "step": heaviside,
}


class MLP(nn.Module):
  """Multilayer perceptron `(N, ...) -> (N, num_classes)` logits.

  Attributes:
    hidden: widths of the hidden layers; `()` is a single linear layer.
    num_classes: output units K (for a binary perceptron use K=1 and the sign).
    activation: "relu", "sigmoid", "tanh" or "step" (Heaviside; its gradient is
      zero almost everywhere, so a step network is trained with
      `perceptron_update`, not by backpropagation).
    dropout: dropout rate after every hidden activation (0 disables).
    kernels, bn_axis_name: accepted for a uniform model constructor; an MLP
      has no convolution and no normalisation.
  """
  hidden: Sequence[int] = ()
  num_classes: int = 2
  activation: str = "relu"
  dropout: float = 0.0
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    layers.check_kernels(self.kernels)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r}: expected one of "
                       f"{', '.join(ACTIVATIONS)}")
    f = ACTIVATIONS[self.activation]
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = f(nn.Dense(width, name=f"dense{i}")(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head")(x)


def perceptron_update(w: jax.Array, b: jax.Array, x: jax.Array, y: jax.Array,
                      lr: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """One step of Rosenblatt's perceptron rule on one sample.

  The neuron predicts `sign(w . x + b)`; on a mistake (`y (w . x + b) <= 0`)
  it moves the hyperplane towards the sample: `w += lr y x`, `b += lr y`.
  On linearly separable data this converges in a finite number of mistakes
  (Novikoff 1962).

  Args:
    w: `(F,)` weights; b: scalar bias.
    x: `(F,)` sample; y: its label in {-1, +1}.
  Returns:
    the updated `(w, b)`.
  """
  mistake = (y * (jnp.dot(w, x) + b) <= 0).astype(w.dtype)
  return w + lr * mistake * y * x, b + lr * mistake * y


def perceptron_fit(x: jax.Array, y: jax.Array, epochs: int = 10,
                   lr: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Runs `perceptron_update` over `(N, F)` samples with labels `(N,)` in {-1, +1},
  `epochs` passes in order, from zero weights. Returns `(w, b)`."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)

  def step(carry, xy):
    return perceptron_update(*carry, *xy, lr=lr), None

  def epoch(carry, _):
    return jax.lax.scan(step, carry, (x, y))[0], None

  init = (jnp.zeros(x.shape[1], x.dtype), jnp.zeros((), x.dtype))
  return jax.lax.scan(epoch, init, None, length=epochs)[0]


def perceptron_predict(w: jax.Array, b: jax.Array, x: jax.Array) -> jax.Array:
  """`sign(x w + b)` in {-1, +1} for `(N, F)` samples."""
  return jnp.where(x @ w + b >= 0, 1, -1)
