"""Flax Linen models; each `__call__(x, *, train)` returns logits."""
from medjax.models.cascade import (CascadedFCN, cascade_predict, crop_to_bbox, organ_bbox,
                                   paste_from_bbox)
from medjax.models.convnet import ConvNet
from medjax.models.fcn import FCN
from medjax.models.mlp import MLP, perceptron_fit, perceptron_predict, perceptron_update
from medjax.models.resnet import ResNet, ResNet18, ResNet34, ResNet50
from medjax.models.soft_tree import (SoftDecisionTree, balance_regularizer, distillation_loss,
                                     leaf_distillation_loss)
from medjax.models.unet import UNet
from medjax.models.vnet import VNet

__all__ = [
    "MLP", "perceptron_update", "perceptron_fit", "perceptron_predict",
    "ConvNet", "FCN", "UNet", "VNet",
    "ResNet", "ResNet18", "ResNet34", "ResNet50",
    "CascadedFCN", "organ_bbox", "crop_to_bbox", "paste_from_bbox", "cascade_predict",
    "SoftDecisionTree", "distillation_loss", "leaf_distillation_loss", "balance_regularizer",
]
