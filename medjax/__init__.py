"""medjax: deep learning for medical images in JAX/Flax."""
__version__ = "0.1.0"
