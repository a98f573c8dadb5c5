"""Flax Linen models; each `__call__(x, *, train)` returns logits."""
from medjax.models.resnet import ResNet, ResNet18, ResNet34, ResNet50
from medjax.models.unet import UNet
from medjax.models.vnet import VNet

__all__ = ["ResNet", "ResNet18", "ResNet34", "ResNet50", "UNet", "VNet"]
