"""medjax: deep learning for medical images in JAX/Flax.

Where a new model, loss, task, dataset, kernel or workdir file goes: the map in
README.md ("Where things go in the code"); each package's docstring details its
modules. Nothing in the library reads flags (the launchers are in `experiments/`).

* `models`: Flax Linen models, 2D and 3D; `layers`: conv building blocks.
* `losses`, `metrics`, `postprocess`: training objectives, scores, post-processing.
* `data`: image IO, TFDS builders, synthetic phantoms, nnU-Net preprocessing, input pipeline.
* `train`: one run from config to report (tasks, SPMD step, checkpoints, workdir).
* `inference`: sliding window, cascade, trained runs as predictors, files in and out.
* `uncertainty`, `calibration`, `explain`: trust in a prediction.
* `features`, `weights`: deep features, pretrained weights from local files.
* `sweep`: ablation grids; `parallel`: device mesh and multi-host start-up.
* `errors`: `InputError`, the one-line error for bad input.

The Pallas kernels are the separate package `medjax_kernels` (folder `kernels/`).

With `MEDJAX_HOST_HEAP=1` in the environment, importing medjax sets glibc's
allocator up for XLA's CPU buffers before JAX starts its threads
(`medjax.host_memory`: freed step memory stays in the heap, no page faults per
step; opt-in, since the heap can grow from step to step).
"""
from medjax import host_memory as _host_memory

__version__ = "0.1.0"
_host_memory.configure()
