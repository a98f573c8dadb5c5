"""medjax_kernels: Pallas kernels for medjax (installed from `kernels/`)."""
from .soft_dice import soft_dice_stats  # noqa: F401
from .conv3d import conv3d  # noqa: F401
