"""Public soft-Dice statistics op: picks the implementation, defines the gradient.

What runs where (`kernels=`, the switch of `medjax_kernels.dispatch`, decided by
the platform the function is *lowered for*, not the process's default backend):

* Pallas (one fused pass each way, probabilities never written to HBM):
  - forward: softmax/sigmoid + the three per-class sums, `pallas_gpu` (Triton) on
    CUDA/ROCm, `pallas_tpu` (Mosaic) on TPU;
  - backward: dlogits recomputed from logits and labels in a second kernel.
  With "pallas" on any other platform (CPU), the Triton kernels in the Pallas
  interpreter (slow: for correctness checks).
* XLA around the kernels: free reshapes to (N, V, K); on TPU the class-major
  transpose/pad of logits and the transpose back of dlogits; the final sum of the
  per-block partial sums (N, blocks, K) → (N, K); padding of the (N, K) cotangents.
* XLA only (`reference`): `kernels="xla"` (differentiated by JAX); `"auto"` on any
  platform other than CUDA/ROCm/TPU (the reference forward and its written-out fused
  backward); `activation=None` (probabilities given: nothing to fuse) and float64
  logits (no kernel computes in float64), on every platform.

`backend=` ("pallas_gpu", "pallas_tpu", "reference") runs that implementation
whatever the platform (tests, benchmarks); with `interpret=True` the TPU kernel runs
in the TPU-semantics interpreter (`pltpu.InterpretParams`: SMEM, VMEM, grid order as
on a TPU). That interpreter is built on ordered io_callbacks, which a
`platform_dependent` branch cannot hold, so it is only reachable this way; inside the
switch the generic Pallas interpreter is used.

Limits: export for one accelerator platform per `jax.export` call (Pallas lowers a
kernel for a single platform, so `platforms=("cpu", "cuda")` fails); flat offsets are
int32, so one call handles < 2³¹ logits.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from medjax_kernels import dispatch

from . import config as cfg
from . import pallas_gpu, pallas_tpu, reference

FUSED_ACTIVATIONS = ("softmax", "sigmoid")
_KERNEL_BACKENDS = ("pallas_gpu", "pallas_tpu")


@dataclasses.dataclass(frozen=True)
class _Options:
  squared: bool
  activation: str
  kernels: str
  backend: Optional[str]
  interpret: bool
  gpu_config: cfg.GpuConfig | None
  tpu_config: cfg.TpuConfig | None


def _dispatch(o: _Options, *args, backward: bool):
  """Forward `(logits, labels)` or backward `(logits, labels, g_i, g_p)` of the op."""
  common = dict(squared=o.squared, activation=o.activation)
  gpu = functools.partial(
      pallas_gpu.soft_dice_stats_bwd if backward else pallas_gpu.soft_dice_stats_fwd,
      config=o.gpu_config, **common)
  tpu = functools.partial(
      pallas_tpu.soft_dice_stats_bwd if backward else pallas_tpu.soft_dice_stats_fwd,
      config=o.tpu_config, **common)
  xla = functools.partial(
      reference.soft_dice_stats_bwd if backward else reference.soft_dice_stats, **common)
  if o.backend == "pallas_gpu":
    return gpu(*args, interpret=o.interpret)
  if o.backend == "pallas_tpu":
    return tpu(*args, interpret=pltpu.InterpretParams() if o.interpret else False)
  return dispatch.by_platform(*args, kernels=o.kernels, gpu=gpu, tpu=tpu, xla=xla,
                              interpret=o.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused(logits, labels, o: _Options):
  return _dispatch(o, logits, labels, backward=False)


def _fused_fwd(logits, labels, o: _Options):
  return _dispatch(o, logits, labels, backward=False), (logits, labels)


def _fused_bwd(o: _Options, residuals, cotangents):
  logits, labels = residuals
  g_intersection, g_pred_sum, _ = cotangents  # target_sum does not depend on logits
  dlogits = _dispatch(o, logits, labels, g_intersection, g_pred_sum, backward=True)
  return dlogits, None  # integer labels: no cotangent


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("squared", "activation", "kernels",
                                             "interpret", "config", "backend"))
def soft_dice_stats(logits: jax.Array, labels: jax.Array, *, squared: bool = False,
                    activation: Optional[str] = "softmax", kernels: str = "auto",
                    interpret: bool = False,
                    config: cfg.GpuConfig | cfg.TpuConfig | None = None,
                    backend: Optional[str] = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-case, per-class soft-Dice statistics (Milletari et al., V-Net, 2016), fused.

    intersection[n, k] = Σ_s p·t,  pred_sum[n, k] = Σ_s p (Σ_s p² if squared),
    target_sum[n, k] = Σ_s t,
  with p = softmax over K (or per-channel sigmoid) in float32, t = one_hot(labels, K).
  A soft-Dice loss is then e.g. 1 − (2·I + ε) / (P + T + ε).

  Args:
    logits: (N, *S, K), spatial rank 1–3 (any works), float32 or bfloat16 (float64
      takes the reference).
    labels: (N, *S) integers; values outside [0, K) count for no class.
    squared: V-Net's squared denominators, Σ p² in `pred_sum`.
    activation: "softmax" (classes exclusive), "sigmoid" (one channel per class) or
      None (`logits` already are probabilities: the reference, nothing to fuse).
    kernels: "auto" — Pallas on CUDA/ROCm (Triton) and TPU (Mosaic), XLA reference
      elsewhere; "xla" — pure-JAX reference everywhere; "pallas" — the Pallas kernel
      of the lowering platform, the Triton kernel interpreted elsewhere (see
      `medjax_kernels.dispatch`).
    interpret: run Pallas kernels in the Pallas interpreter (e.g. on CPU, for tests).
    config: tile sizes (`config.GpuConfig` or `config.TpuConfig`) for the matching
      kernel; the heuristic default when None.
    backend: None, or "pallas_gpu" / "pallas_tpu" / "reference" to run that
      implementation whatever the platform (tests, benchmarks); overrides `kernels`.
      "pallas_tpu" with `interpret=True` uses the TPU-semantics interpreter.

  Returns:
    (intersection, pred_sum, target_sum), each float32 (N, K) (float64 for float64
    logits). Differentiable in `logits` (the backward pass is a second fused kernel);
    labels get no gradient.
  """
  reference.check_args(logits, labels, activation)
  dispatch.check_kernels(kernels)
  dispatch.check_backend(backend)
  fusable = activation in FUSED_ACTIVATIONS and logits.dtype != jnp.float64
  if backend in _KERNEL_BACKENDS and not fusable:
    raise ValueError(f"backend={backend!r} fuses softmax or sigmoid of 16/32-bit logits, "
                     f"got activation={activation!r} and {logits.dtype} logits")
  if backend == "reference" or (backend is None and (kernels == "xla" or not fusable)):
    return reference.soft_dice_stats(logits, labels, squared=squared, activation=activation)
  o = _Options(
      squared=bool(squared), activation=activation, kernels=kernels, backend=backend,
      interpret=bool(interpret),
      gpu_config=config if isinstance(config, cfg.GpuConfig) else None,
      tpu_config=config if isinstance(config, cfg.TpuConfig) else None)
  return _fused(logits, labels, o)
