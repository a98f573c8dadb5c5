"""The training state: a pytree of everything a resumed run needs."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Step counter, parameters, optimizer state and BatchNorm statistics.

  The dropout key of step `s` is `fold_in(fold_in(key(seed), s), device)`, so the
  state needs no RNG of its own and a resumed run draws the same numbers.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params, batch_stats, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               batch_stats=batch_stats, tx=tx)

  def apply_gradients(self, grads, batch_stats) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, batch_stats=batch_stats)

  def variables(self) -> dict:
    """The `variables` dict for `model.apply`."""
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v
