"""Rematerialisation of model stages: recompute activations in the backward pass.

`jax.checkpoint` (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost") keeps only a stage's inputs for the backward pass and recomputes what
lies inside the stage, trading compute for the memory of the stored
activations. The policy names which intermediates are still saved
(`jax.checkpoint_policies`): "nothing_saveable" recomputes everything,
"dots_saveable" keeps the matmul/convolution outputs and recomputes only the
cheap elementwise work.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable",
            "dots_with_no_batch_dims_saveable")


def check_policy(policy: str) -> None:
  if policy not in POLICIES:
    raise ValueError(f"remat_policy={policy!r}: expected one of {', '.join(POLICIES)}")


def stage(cls: type[nn.Module], remat: bool, policy: str,
          static_argnums: Sequence[int]) -> type[nn.Module]:
  """`cls` itself, or `cls` wrapped in `flax.linen.remat` with the named policy.

  `static_argnums` counts `self` as 0 (as `flax.linen.remat` does) and must
  name the positional `train` flag: a traced flag could not choose dropout or
  BatchNorm's mode.
  """
  if not remat:
    return cls
  check_policy(policy)
  return nn.remat(cls, policy=getattr(jax.checkpoint_policies, policy),
                  static_argnums=tuple(static_argnums))
