"""medjax: deep learning for medical images in JAX/Flax.

Where things go (each a module with one job; nothing here reads flags):

* a model: `medjax/models/<name>.py` (a Flax Linen module, `__call__(x, *,
  train)` -> logits), exported from `medjax.models` and named in
  `medjax.train.model_factory.MODEL_CLASSES`;
* a loss: a function in `medjax/losses.py` `(logits, labels, ...) -> scalar`,
  registered in its `_LOSSES` table (`config.loss.name`);
* a task (what a run learns and how it is scored): `medjax/train/tasks/<name>.py`,
  a `Task` subclass, plus one line in `medjax.train.tasks.TASKS`;
* a run made of runs (a cascade): an orchestrator module in `medjax/train/`
  entered from `medjax.train.run`;
* a dataset: a TFDS builder in `medjax/data/` (array_record, `manual_dir`, no download);
* a kernel: a folder in `kernels/` (`api.py`, `reference.py`, `pallas_gpu.py`,
  `pallas_tpu.py`, `bench_shapes.py`) dispatched by `medjax_kernels.dispatch`;
* a workdir file: a name in `medjax/train/workdir.py`, the only place that spells them.

Importing medjax sets glibc's allocator up for XLA's CPU buffers before JAX
starts its threads (`medjax.host_memory`: freed step memory stays in the heap,
no page faults per step); `MEDJAX_HOST_HEAP=0` in the environment turns it off.
"""
from medjax import host_memory as _host_memory

__version__ = "0.1.0"
_host_memory.configure()
