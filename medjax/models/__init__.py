"""Flax Linen models; each `__call__(x, *, train)` returns logits.

A new model is one module here exporting its class, plus one line in
`medjax.train.model_factory.MODEL_CLASSES` (its `config.model.name`).
"""
from medjax.models.cascade import CascadedFCN
from medjax.models.convnet import ConvNet
from medjax.models.fcn import FCN
from medjax.models.mlperf_unet3d import MLPerfUNet3D
from medjax.models.mlp import MLP, perceptron_fit, perceptron_predict, perceptron_update
from medjax.models.resnet import ResNet, ResNet18, ResNet34, ResNet50
from medjax.models.retina_unet import RetinaUNet, anchors_for
from medjax.models.soft_tree import (SoftDecisionTree, balance_regularizer, distillation_loss,
                                     leaf_distillation_loss)
from medjax.models.unet import UNet
from medjax.models.vnet import VNet

__all__ = [
    "MLP", "perceptron_update", "perceptron_fit", "perceptron_predict",
    "ConvNet", "FCN", "UNet", "VNet", "MLPerfUNet3D",
    "ResNet", "ResNet18", "ResNet34", "ResNet50",
    "CascadedFCN",
    "RetinaUNet", "anchors_for",
    "SoftDecisionTree", "distillation_loss", "leaf_distillation_loss", "balance_regularizer",
]
