"""Frozen parameters for fine-tuning: which paths are frozen, and BatchNorm in inference mode there.

Fine-tuning a pretrained network often keeps its early stages fixed
(Tajbakhsh et al. 2016, "Convolutional Neural Networks for Medical Image
Analysis: Full Training or Fine Tuning?", IEEE TMI; Yosinski et al. 2014):
only the later stages (or only the head: a linear probe) learn. Two config
fields of `config.optimizer` say which parameters are frozen, as '/'-separated
path prefixes of the parameter tree (`stem`, `stage1`, `stage4/block1`, `head`):

* `frozen`: these prefixes are frozen;
* `trainable`: when not empty, everything *not* under these prefixes is frozen
  (`trainable=("head",)` is a linear probe).

`medjax.train.optim` gives frozen parameters a zero update
(`optax.set_to_zero`). Their BatchNorm statistics must stay fixed too, and
there are two ways: let the frozen layers normalise with batch statistics and
put the old running statistics back after each step, or run them in inference
mode (`use_running_average=True`), which normalises with the stored running
statistics and leaves them unchanged. medjax does the second
(`freeze_batch_norm`): a frozen stage then computes exactly the function it
computed at the end of pre-training, in training as at test time (no
train/test mismatch, and batches of a few examples cannot perturb it) — what
torchvision's `FrozenBatchNorm2d` and Detectron's frozen backbones do.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import ml_collections

from medjax.errors import InputError


def _prefixes(value, field: str) -> tuple[str, ...]:
  if isinstance(value, str):
    value = (value,) if value else ()
  out = []
  for p in value or ():
    if not isinstance(p, str) or not p.strip("/"):
      raise InputError(f"config.optimizer.{field}: expected '/'-separated parameter path "
                       f"prefixes such as 'stem' or 'stage4/block1', got {p!r}")
    out.append(p.strip("/"))
  return tuple(out)


def is_under(path: str, prefix: str) -> bool:
  """Whether the '/'-separated `path` is `prefix` or inside it ("stage1" does not
  contain "stage10")."""
  return path == prefix or path.startswith(prefix + "/")


def frozen_prefixes(cfg: ml_collections.ConfigDict) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """`(frozen, trainable)` path prefixes of `config.optimizer` (empty when absent)."""
  return (_prefixes(cfg.get("frozen", ()), "frozen"),
          _prefixes(cfg.get("trainable", ()), "trainable"))


def make_is_frozen(cfg: ml_collections.ConfigDict) -> Callable[[str], bool]:
  """`is_frozen(path)` for a '/'-separated parameter or module path."""
  frozen, trainable = frozen_prefixes(cfg)

  def is_frozen(path: str) -> bool:
    if any(is_under(path, p) for p in frozen):
      return True
    return bool(trainable) and not any(is_under(path, p) for p in trainable)

  return is_frozen


def check_prefixes_match(cfg: ml_collections.ConfigDict, paths: Sequence[str]) -> None:
  """InputError for a `frozen`/`trainable` prefix that names no parameter (a typo would
  otherwise silently train everything)."""
  frozen, trainable = frozen_prefixes(cfg)
  for field, prefixes in (("frozen", frozen), ("trainable", trainable)):
    for p in prefixes:
      if not any(is_under(path, p) for path in paths):
        tops = sorted({path.split("/")[0] for path in paths})
        raise InputError(f"config.optimizer.{field}: {p!r} matches no parameter of the model "
                         f"(top-level names: {', '.join(tops)})")


def freeze_batch_norm(model: nn.Module, cfg: ml_collections.ConfigDict) -> nn.Module:
  """`model` with every BatchNorm under a frozen path run in inference mode.

  Returns a module of a subclass of `type(model)` with the same fields and the
  same parameter tree, whose `__call__` intercepts the BatchNorm calls of
  frozen submodules (`flax.linen.intercept_methods`) and passes
  `use_running_average=True`: they normalise with their running statistics and
  do not update them. `model` itself is returned when nothing is frozen.
  """
  frozen, trainable = frozen_prefixes(cfg)
  if not frozen and not trainable:
    return model
  is_frozen = make_is_frozen(cfg)

  def interceptor(next_fun, args, kwargs, context):
    mdl = context.module
    if (context.method_name == "__call__" and isinstance(mdl, nn.BatchNorm)
        and is_frozen("/".join(mdl.path))):
      kwargs = dict(kwargs, use_running_average=True)
    return next_fun(*args, **kwargs)

  base = type(model)

  class FrozenBatchNorm(base):  # type: ignore[misc, valid-type]
    def __call__(self, *args, **kwargs):
      with nn.intercept_methods(interceptor):
        return super().__call__(*args, **kwargs)

  FrozenBatchNorm.__name__ = FrozenBatchNorm.__qualname__ = base.__name__
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.init and f.name not in ("parent", "name")}
  return FrozenBatchNorm(**fields)


__all__ = ["is_under", "frozen_prefixes", "make_is_frozen", "check_prefixes_match",
           "freeze_batch_norm"]
