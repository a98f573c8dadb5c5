"""Benchmarks and compile checks: run from a clone (`python -m benchmarks.<name>`), not installed.

Launchers (the `experiments.cli` pattern: absl flags defined at import, `main(argv)`
calling one library function, bad input -> one `error:` line, exit 2):

* `bench_train`: how fast a config trains (`train_speed`): compile time, step time with
  its spread, memory, input pipeline, inference; `--torch` adds the same U-Net in
  PyTorch (`torch_unet`) in the same process.
* `bench_kernels`: Pallas vs XLA (vs PyTorch's conv3d, `torch_conv3d`) per kernel and
  shape (`kernel_speed`).
* `compile_check`: every Pallas kernel compiled for an H100 (Triton) or a TPU v5e/v6e
  (Mosaic) on this CPU machine, and whole programs for a device-less H100; its tools are
  installed into a side folder by `--install_tools`.
* `inference_memory`, `prepare_memory`, `train_memory`: peak host memory of
  sliding-window inference, of preprocessing one large case, and of training on a
  growing folder dataset (`memory/`).

Every timing goes through `timing` (warm-up, then the median with quartiles and range,
each call synchronised with the device). `gpu_bench.sh` is the one script a GPU machine
runs; measured figures go to `RESULTS.md` with the machine, the date, the command and
the baseline of the same run.
"""
import sys

if sys.argv[:1] == ["-m"]:  # `python -m benchmarks.<launcher>`, before the launcher's imports
  from experiments import host_allocator
  host_allocator.reexec_with_huge_pages()
  del sys.modules["experiments.host_allocator"], host_allocator
