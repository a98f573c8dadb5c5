"""Pretrained weights from local files (nothing is downloaded).

* `medjax.weights.torchvision`: torchvision-layout ResNet-18/34/50 and VGG
  weights (`.safetensors`, `.npz`, or `.pth` with PyTorch) -> Flax variables.
* `medjax.weights.adapt`: 2D RGB weights on medical inputs (1-channel first
  conv, I3D inflation to 3D, slice-wise application).
"""
from medjax.weights.adapt import (adapt_input_channels, apply_slicewise, inflate_kernel,
                                  inflate_to_3d)
from medjax.weights.torchvision import (load_state_dict, resnet_variables, torchvision_variables,
                                        vgg_variables)

__all__ = [
    "load_state_dict", "resnet_variables", "vgg_variables", "torchvision_variables",
    "adapt_input_channels", "inflate_kernel", "inflate_to_3d", "apply_slicewise",
]
