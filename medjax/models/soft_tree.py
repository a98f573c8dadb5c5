"""Soft binary decision tree for distilling a neural network (Frosst & Hinton
2017, "Distilling a Neural Network Into a Soft Decision Tree").

A complete binary tree of depth d: 2^d - 1 inner nodes and 2^d leaves.

| part        | computes                                                                 |
|-------------|--------------------------------------------------------------------------|
| inner node i| `p_i(x) = sigmoid(beta (w_i . x + b_i))`: probability of the right branch |
| inverse temperature | `beta = exp(log_beta)`, one learned scalar (initialised to 1)     |
| leaf l      | a learned distribution `Q_l = softmax(phi_l)` over the K classes         |
| path prob   | `P_l(x)` = product of the branch probabilities from the root to leaf l   |
| output      | `log sum_l P_l(x) Q_l`: the log of the mixture of the leaf distributions |

The output is a log-probability vector, so it can be used as logits (its
softmax is the mixture itself). The paper's test-time prediction uses the
single leaf with the largest path probability: `SoftDecisionTree.max_path_logits`.
Nodes are numbered breadth-first: node i has children 2i+1 (left) and 2i+2
(right); leaves are numbered left to right.

Training (Frosst & Hinton): distil the soft targets of a teacher network,
plus `balance_regularizer(aux, lam)`, the penalty that keeps every inner node
from routing all its inputs to one side. Two losses are provided:
`leaf_distillation_loss` is the paper's: the path-probability-weighted
cross-entropy of every leaf's distribution to the targets,
`sum_l P_l(x) CE(T(x), Q_l)`; `distillation_loss(tree_logits, teacher_logits, T)`
is the cross-entropy of the mixture output (a lower bound of the former by
Jensen's inequality, and the loss any trainer applies to logits). The
`distillation` task (`medjax.train.tasks.distillation`) trains the tree with
them from a trained run's soft targets, or on hard labels.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import layers


class SoftDecisionTree(nn.Module):
  """Soft decision tree `(N, ...) -> (N, num_classes)` log-mixture "logits".

  Attributes:
    depth: number of inner-node levels d (2^d leaves).
    num_classes: K.
    kernels, bn_axis_name: accepted for a uniform model constructor (no
      convolution, no normalisation here).
  """
  depth: int = 4
  num_classes: int = 10
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None

  def setup(self):
    layers.check_kernels(self.kernels)
    if self.depth < 1:
      raise ValueError(f"SoftDecisionTree: depth must be >= 1, got {self.depth}")
    self.inner = nn.Dense(2 ** self.depth - 1, name="inner")  # w_i, b_i for every node
    self.log_beta = self.param("log_beta", nn.initializers.zeros, ())
    self.leaf_logits = self.param("leaves", nn.initializers.normal(0.1),
                                  (2 ** self.depth, self.num_classes))

  def _log_paths(self, x: jax.Array):
    """Returns (log P_l (N, 2^d), split probabilities p_i (N, 2^d-1),
    path probabilities of inner nodes (N, 2^d-1))."""
    x = x.reshape(x.shape[0], -1)
    z = jnp.exp(self.log_beta) * self.inner(x)
    log_right, log_left = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
    log_mu = jnp.zeros((x.shape[0], 1), z.dtype)
    node_log_mu = []
    for level in range(self.depth):
      lo, hi = 2 ** level - 1, 2 ** (level + 1) - 1
      node_log_mu.append(log_mu)
      log_mu = jnp.stack([log_mu + log_left[:, lo:hi], log_mu + log_right[:, lo:hi]],
                         axis=-1).reshape(x.shape[0], -1)
    return log_mu, jax.nn.sigmoid(z), jnp.exp(jnp.concatenate(node_log_mu, axis=1))

  def __call__(self, x: jax.Array, *, train: bool = False, return_aux: bool = False):
    """Log-mixture `(N, K)`; with `return_aux`, also a dict with "path_probs"
    `(N, 2^d-1)` (probability of reaching each inner node), "split_probs"
    `(N, 2^d-1)`, "leaf_probs" `(N, 2^d)` and "leaf_log_dist" `(2^d, K)` (log Q_l)
    for `balance_regularizer` and `leaf_distillation_loss`."""
    log_leaf, split, node_mu = self._log_paths(x)
    log_q = jax.nn.log_softmax(self.leaf_logits, axis=-1)  # (L, K)
    out = jax.nn.logsumexp(log_leaf[:, :, None] + log_q[None], axis=1)
    if return_aux:
      return out, {"path_probs": node_mu, "split_probs": split,
                   "leaf_probs": jnp.exp(log_leaf), "leaf_log_dist": log_q}
    return out

  def max_path_logits(self, x: jax.Array) -> jax.Array:
    """The paper's test-time rule: the log-distribution of the most probable leaf."""
    log_leaf, _, _ = self._log_paths(x)
    log_q = jax.nn.log_softmax(self.leaf_logits, axis=-1)
    return log_q[jnp.argmax(log_leaf, axis=1)]


def distillation_loss(tree_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float = 1.0) -> jax.Array:
  """Mean cross-entropy `-sum_k softmax(teacher / T)_k log softmax(tree)_k`.

  Args:
    tree_logits: `(N, K)` student outputs (the tree's log-mixture).
    teacher_logits: `(N, K)` logits of the network being distilled; the
      temperature T > 1 softens them (Hinton et al. 2015).
  """
  targets = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(tree_logits, axis=-1), axis=-1))


def leaf_distillation_loss(aux: dict, teacher_logits: jax.Array,
                           temperature: float = 1.0) -> jax.Array:
  """Frosst & Hinton's loss: mean over x of `sum_l P_l(x) (-sum_k T_k(x) log Q_lk)`
  with `T = softmax(teacher_logits / temperature)`; `aux` from `return_aux=True`."""
  targets = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
  leaf_ce = -targets @ aux["leaf_log_dist"].T  # (N, L)
  return jnp.mean(jnp.sum(aux["leaf_probs"] * leaf_ce, axis=-1))


def balance_regularizer(aux: dict, lam: float = 0.1, eps: float = 1e-6) -> jax.Array:
  """Frosst & Hinton's penalty towards balanced splits.

  `C = -sum_i lam 2^-d(i) (0.5 log alpha_i + 0.5 log(1 - alpha_i))` with
  `alpha_i = sum_x P^i(x) p_i(x) / sum_x P^i(x)` the batch average of node i's
  right-branch probability weighted by the probability of reaching it, and d(i)
  the depth of node i (0 at the root). Minimal (lam * sum 2^-d log 2) when
  every node splits its inputs evenly. The paper computes alpha over a
  running average of batches; here it is the current batch.

  Args:
    aux: the dict returned by `SoftDecisionTree(..., return_aux=True)`.
  """
  mu, p = aux["path_probs"], aux["split_probs"]
  alpha = jnp.sum(mu * p, axis=0) / (jnp.sum(mu, axis=0) + eps)
  alpha = jnp.clip(alpha, eps, 1 - eps)
  n = mu.shape[1]
  node_depth = jnp.floor(jnp.log2(jnp.arange(n) + 1.0))
  weight = lam * 2.0 ** (-node_depth)
  return -jnp.sum(weight * 0.5 * (jnp.log(alpha) + jnp.log1p(-alpha)))
