"""Benchmarks of whole training runs (`train_bench`) and their PyTorch baseline (`torch_unet`).

Op-level kernel benchmarks live with the kernels (`medjax_kernels.*.bench_shapes`,
`experiments.bench_kernels`); `compile_check` compiles every Pallas kernel for an H100 on
a CPU machine (`experiments.compile_check`).
"""
