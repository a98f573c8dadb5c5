"""Fused softmax + soft-Dice statistics (Milletari 2016): Pallas GPU/TPU kernels, XLA reference."""
from .api import soft_dice_stats
from .config import GpuConfig, TpuConfig

__all__ = ["GpuConfig", "TpuConfig", "soft_dice_stats"]
