"""Flax Linen models; each `__call__(x, *, train)` returns logits."""
from medjax.models.convnet import ConvNet
from medjax.models.fcn import FCN
from medjax.models.mlp import MLP, perceptron_fit, perceptron_predict, perceptron_update
from medjax.models.resnet import ResNet, ResNet18, ResNet34, ResNet50
from medjax.models.unet import UNet
from medjax.models.vnet import VNet

__all__ = ["ConvNet", "FCN", "MLP", "perceptron_fit", "perceptron_predict", "perceptron_update",
           "ResNet", "ResNet18", "ResNet34", "ResNet50", "UNet", "VNet"]
