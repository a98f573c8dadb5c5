"""Flax Linen models; each `__call__(x, *, train)` returns logits."""
from medjax.models.unet import UNet

__all__ = ["UNet"]
