"""Optimizers, learning-rate schedules and fine-tuning from a config (optax).

The one owner of what trains and how fast: `make_optimizer` builds Adam /
AdamW / SGD with a warm-up schedule, frozen parameters and per-prefix
learning-rate multipliers (`config.optimizer.lr_multipliers`: prefix ->
factor, the longest matching prefix wins), through one
`optax.multi_transform` over the parameter tree; `freeze_batch_norm` keeps
the BatchNorm statistics of frozen stages fixed.

Frozen parameters. Fine-tuning a pretrained network often keeps its early stages fixed
(Tajbakhsh et al. 2016, "Convolutional Neural Networks for Medical Image
Analysis: Full Training or Fine Tuning?", IEEE TMI; Yosinski et al. 2014):
only the later stages (or only the head: a linear probe) learn. Two config
fields of `config.optimizer` say which parameters are frozen, as '/'-separated
path prefixes of the parameter tree (`stem`, `stage1`, `stage4/block1`, `head`):

* `frozen`: these prefixes are frozen;
* `trainable`: when not empty, everything *not* under these prefixes is frozen
  (`trainable=("head",)` is a linear probe).

Frozen parameters get a zero update (`optax.set_to_zero`). Their BatchNorm
statistics must stay fixed too, and
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
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import ml_collections
import jax.numpy as jnp
import optax

from medjax.errors import InputError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "poly", "cosine")


def path_prefixes(value, field: str) -> tuple[str, ...]:
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
  return (path_prefixes(cfg.get("frozen", ()), "frozen"),
          path_prefixes(cfg.get("trainable", ()), "trainable"))


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


def warmup_schedule(init: float, peak: float, warmup_steps: int, every: int = 0
                    ) -> optax.Schedule:
  """The learning rate of the first `warmup_steps` steps, from `init` towards `peak`.

  `every=0`: linear, `init + (peak - init) t / warmup_steps` at update `t` (0-based).
  `every=k`: a staircase that moves once every `k` updates, as the MLPerf 3D U-Net
  reference sets it at the start of each epoch of `k` steps (`runtime/training.py`
  `lr_warmup`: `init + (peak - init) e / E` in epoch `e = 1..E`): update `t` gets
  `init + (peak - init) min((t // k + 1) k, warmup_steps) / warmup_steps`.
  """
  if every <= 0:
    return optax.linear_schedule(init, peak, warmup_steps)

  def schedule(count):
    reached = jnp.minimum((count // every + 1) * every, warmup_steps)
    return init + (peak - init) * reached / warmup_steps

  return schedule


def make_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Warm-up (`warmup_schedule`: `warmup_steps`, from `warmup_init`, every
  `warmup_every` steps), then "constant", "poly" (nnU-Net: lr·(1 - t/T)^0.9) or "cosine"."""
  lr, warmup = float(cfg.learning_rate), int(cfg.get("warmup_steps", 0))
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule == "poly":
    main = optax.polynomial_schedule(lr, 0.0, power=float(cfg.get("poly_power", 0.9)),
                                     transition_steps=decay_steps)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(cfg.get("final_fraction", 0.0)))
  else:
    raise InputError(f"optimizer.schedule={cfg.schedule!r}: expected one of {', '.join(SCHEDULES)}")
  if warmup <= 0:
    return main
  warm = warmup_schedule(float(cfg.get("warmup_init", 0.0)), lr, warmup,
                         int(cfg.get("warmup_every", 0)))
  return optax.join_schedules([warm, main], [warmup])


def _base_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule
                    ) -> optax.GradientTransformation:
  if cfg.name == "adam":
    return optax.adam(schedule)
  if cfg.name == "adamw":
    return optax.adamw(schedule, weight_decay=float(cfg.get("weight_decay", 1e-4)))
  if cfg.name == "sgd":
    return optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.99)) or None,
                     nesterov=bool(cfg.get("nesterov", True)))
  raise InputError(f"optimizer.name={cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}")


def lr_multipliers(cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """`config.optimizer.lr_multipliers` as `{prefix: factor}` (empty when absent)."""
  raw = cfg.get("lr_multipliers", None) or {}
  if hasattr(raw, "to_dict"):
    raw = raw.to_dict()
  if not isinstance(raw, dict):
    raise InputError(f"config.optimizer.lr_multipliers={raw!r}: expected a mapping "
                     "{parameter path prefix: factor}, e.g. {'stage4': 0.1}")
  out = {}
  for prefix, factor in raw.items():
    try:
      factor = float(factor)
    except (TypeError, ValueError):
      factor = -1.0
    if factor < 0 or not str(prefix).strip("/"):
      raise InputError(f"config.optimizer.lr_multipliers[{prefix!r}]={raw[prefix]!r}: expected "
                       "a parameter path prefix and a factor >= 0")
    out[str(prefix).strip("/")] = factor
  return out


def param_labels(cfg: ml_collections.ConfigDict, params: Any) -> Any:
  """The label of each parameter for `optax.multi_transform`: "frozen", or the
  learning-rate factor of its longest matching `lr_multipliers` prefix as a
  string ("1.0" when none matches).

  Raises:
    InputError: a `frozen`, `trainable` or `lr_multipliers` prefix matches no parameter.
  """
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  paths = list(flat)
  check_prefixes_match(cfg, paths)
  multipliers = lr_multipliers(cfg)
  for prefix in multipliers:
    if not any(is_under(p, prefix) for p in paths):
      raise InputError(f"config.optimizer.lr_multipliers: {prefix!r} matches no parameter "
                       f"of the model (top-level names: "
                       f"{', '.join(sorted({p.split('/')[0] for p in paths}))})")
  is_frozen = make_is_frozen(cfg)

  def label(path: str) -> str:
    if is_frozen(path):
      return "frozen"
    matches = [p for p in multipliers if is_under(path, p)]
    return repr(multipliers[max(matches, key=len)]) if matches else "1.0"

  return flax.traverse_util.unflatten_dict({k: label(k) for k in paths}, sep="/")


def _needs_labels(cfg: ml_collections.ConfigDict) -> bool:
  frozen, trainable = frozen_prefixes(cfg)
  return bool(frozen or trainable or lr_multipliers(cfg))


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam / AdamW / SGD (+Nesterov momentum), optional global-norm clipping,
  frozen parameters and per-prefix learning-rate factors.

  With `frozen`/`trainable`/`lr_multipliers` set, the update is
  `multi_transform({"frozen": set_to_zero, "<f>": chain(opt, scale(f))})`:
  scaling the final update by `f` is the same as multiplying the learning rate
  by `f` for Adam, AdamW (whose weight decay is also scaled by the learning
  rate) and SGD with momentum. Frozen parameters get no update (not even
  weight decay), and their gradients are zeroed before the global-norm
  clipping so that they do not shrink the others.
  """
  schedule = make_schedule(cfg, num_steps)
  opt = _base_optimizer(cfg, schedule)
  clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
  if not _needs_labels(cfg):
    if clip > 0:
      opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    return opt, schedule
  factors = {"1.0": 1.0, **{repr(f): f for f in lr_multipliers(cfg).values()}}
  transforms = {"frozen": optax.set_to_zero()}
  for name, f in factors.items():
    transforms[name] = opt if f == 1.0 else optax.chain(opt, optax.scale(f))
  labels = lambda params: param_labels(cfg, params)  # noqa: E731
  parts = []
  if clip > 0:
    zero_frozen = {"frozen": optax.set_to_zero(), **{n: optax.identity() for n in factors}}
    parts += [optax.multi_transform(zero_frozen, labels), optax.clip_by_global_norm(clip)]
  parts.append(optax.multi_transform(transforms, labels))
  return optax.chain(*parts), schedule
