"""medjax_kernels: Pallas kernels for medjax (installed from `kernels/`)."""
