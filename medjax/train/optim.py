"""Optimizers and learning-rate schedules from a config (optax)."""
from __future__ import annotations

import ml_collections
import optax

from medjax.errors import InputError

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


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam / AdamW / SGD (+Nesterov momentum), optional global-norm clipping."""
  schedule = make_schedule(cfg, num_steps)
  if cfg.name == "adam":
    opt = optax.adam(schedule)
  elif cfg.name == "adamw":
    opt = optax.adamw(schedule, weight_decay=float(cfg.get("weight_decay", 1e-4)))
  elif cfg.name == "sgd":
    opt = optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.99)) or None,
                    nesterov=bool(cfg.get("nesterov", True)))
  else:
    raise InputError(f"optimizer.name={cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}")
  clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
  if clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(clip), opt)
  return opt, schedule
