"""Optimizers and learning-rate schedules from a config (optax).

Fine-tuning (`medjax.train.freeze`): `config.optimizer.frozen` /
`trainable` path prefixes get a zero update, and
`config.optimizer.lr_multipliers` (prefix -> factor, the longest matching
prefix wins) scale the learning rate of parts of the network, through one
`optax.multi_transform` over the parameter tree.
"""
from __future__ import annotations

from typing import Any

import flax
import ml_collections
import optax

from medjax.errors import InputError
from medjax.train import freeze

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "poly", "cosine")


def make_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up, then "constant", "poly" (nnU-Net: lr·(1 - t/T)^0.9) or "cosine"."""
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
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


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
  freeze.check_prefixes_match(cfg, paths)
  multipliers = lr_multipliers(cfg)
  for prefix in multipliers:
    if not any(freeze.is_under(p, prefix) for p in paths):
      raise InputError(f"config.optimizer.lr_multipliers: {prefix!r} matches no parameter "
                       f"of the model (top-level names: "
                       f"{', '.join(sorted({p.split('/')[0] for p in paths}))})")
  is_frozen = freeze.make_is_frozen(cfg)

  def label(path: str) -> str:
    if is_frozen(path):
      return "frozen"
    matches = [p for p in multipliers if freeze.is_under(path, p)]
    return repr(multipliers[max(matches, key=len)]) if matches else "1.0"

  return flax.traverse_util.unflatten_dict({k: label(k) for k in paths}, sep="/")


def _needs_labels(cfg: ml_collections.ConfigDict) -> bool:
  frozen, trainable = freeze.frozen_prefixes(cfg)
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
