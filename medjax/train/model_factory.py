"""Builds the model named by `config.model.name` (a module of `medjax.models`)."""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from medjax import models
from medjax.errors import InputError
from medjax.models import remat as remat_lib
from medjax.train import optim

# config.model.name -> class name in medjax.models
MODEL_CLASSES = {
    "unet": "UNet",
    "mlperf_unet3d": "MLPerfUNet3D",
    "vnet": "VNet",
    "fcn": "FCN",
    "mlp": "MLP",
    "convnet": "ConvNet",
    "resnet": "ResNet",
    "soft_tree": "SoftDecisionTree",
    "retina_unet": "RetinaUNet",
}

DTYPES = ("float32", "bfloat16")


def speed_fields(config: ml_collections.ConfigDict, cls: type, *, training: bool) -> dict:
  """The model fields that `config.dtype`, `config.remat` and `config.remat_policy` set.

  "float32" sets nothing (the model computes in its input's dtype). A model
  without a `dtype` (or `remat`) field refuses "bfloat16" (or `remat=True`).
  Rematerialisation only matters for gradients, so it is set for training only.
  """
  fields = getattr(cls, "__dataclass_fields__", {})
  dtype = config.get("dtype", "float32")
  if dtype not in DTYPES:
    raise InputError(f"config.dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
  out = {}
  if dtype != "float32":
    if "dtype" not in fields:
      raise InputError(f"config.dtype={dtype!r}: medjax.models.{cls.__name__} has no "
                       "compute dtype; use dtype=float32")
    out["dtype"] = dtype
  if config.get("remat", False):
    if "remat" not in fields:
      raise InputError(f"config.remat=True: medjax.models.{cls.__name__} has no "
                       "rematerialised stages (U-Net and V-Net have)")
    policy = config.get("remat_policy", "nothing_saveable")
    try:
      remat_lib.check_policy(policy)
    except ValueError as e:
      raise InputError(f"config.{e}") from None
    if training:
      out.update(remat=True, remat_policy=policy)
  return out


def build_model(config: ml_collections.ConfigDict, *, training: bool = True) -> nn.Module:
  """`medjax.models.<Class>(**config.model minus name, num_classes, kernels[, bn_axis_name],
  dtype/remat from `speed_fields`)`.

  With `training=True` BatchNorm statistics are synchronised over the mesh axis 'data'.
  """
  cfg = config.model.to_dict()
  name = cfg.pop("name")
  if name not in MODEL_CLASSES or not hasattr(models, MODEL_CLASSES[name]):
    available = sorted(k for k, v in MODEL_CLASSES.items() if hasattr(models, v))
    raise InputError(f"model.name={name!r}: expected one of {', '.join(available)}")
  cls = getattr(models, MODEL_CLASSES[name])
  fields = getattr(cls, "__dataclass_fields__", {})
  cfg["num_classes"] = config.num_classes
  if "kernels" in fields:
    cfg["kernels"] = config.kernels
  if "bn_axis_name" in fields:
    cfg["bn_axis_name"] = "data" if training else None
  cfg.update(speed_fields(config, cls, training=training))
  for key, value in cfg.items():
    if key not in fields:
      raise InputError(f"model.{key}: not a field of medjax.models.{cls.__name__} "
                       f"(fields: {', '.join(sorted(f for f in fields if f not in ('parent', 'name')))})")
    if isinstance(value, list):
      cfg[key] = tuple(value)
    elif isinstance(value, str) and value.lower() == "none":  # `--config.model.norm=None`
      cfg[key] = None
  model = cls(**cfg)
  # Frozen stages (config.optimizer.frozen/trainable) keep their BatchNorm statistics.
  return optim.freeze_batch_norm(model, config.optimizer) if training else model
