"""Training: state, SPMD step, loop, checkpoints, logging, reports."""
