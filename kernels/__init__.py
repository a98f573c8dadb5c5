"""medjax_kernels: Pallas kernels for medjax (installed from `kernels/`).

The lowest layer: medjax imports it, never the reverse.

* `dispatch`: the kernel switch (`kernels="auto"|"xla"|"pallas"`), its check,
  and the choice of implementation by the platform a function is lowered for.
* `conv3d`, `soft_dice`: one package per op (api.py dispatch, reference.py
  pure JAX, pallas_gpu.py Triton, pallas_tpu.py Mosaic, config.py tile sizes,
  bench_shapes.py). A new kernel is a new such package that calls
  `dispatch.by_platform`.
* `conv_xla`: the N-d convolution formulations in pure XLA (every 1D/2D conv
  of the models, and the XLA path of `conv3d`).
"""
from .soft_dice import soft_dice_stats  # noqa: F401
from .conv3d import conv3d  # noqa: F401
