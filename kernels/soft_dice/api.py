"""Public soft-Dice statistics op: picks the implementation, defines the gradient.

What runs where:

* Pallas (one fused pass each way, probabilities never written to HBM):
  - forward: softmax/sigmoid + the three per-class sums, `pallas_gpu` (Triton) on
    CUDA/ROCm, `pallas_tpu` (Mosaic) on TPU;
  - backward: dlogits recomputed from logits and labels in a second kernel.
* XLA around the kernels: free reshapes to (N, V, K); on TPU the class-major
  transpose/pad of logits and the transpose back of dlogits; the final sum of the
  per-block partial sums (N, blocks, K) → (N, K); padding of the (N, K) cotangents.
* XLA only: `implementation="xla"` (pure-JAX `reference`, differentiated by JAX), and
  `"auto"` on any platform other than CUDA/ROCm/TPU (e.g. CPU), which runs the reference
  forward and its written-out fused backward.

With `implementation="auto"` the choice is made by `jax.lax.platform_dependent`, i.e.
by the platform the function is *lowered for*, not the process's default backend: a
function exported for "cuda" from a CPU machine carries the Triton kernel.

Limits: export for one accelerator platform per `jax.export` call (Pallas lowers a
kernel for a single platform, so `platforms=("cpu", "cuda")` fails); `"pallas"` without
`interpret=True` cannot be lowered for CPU (JAX reports that `platform_index` has no
CPU rule); flat offsets are int32, so one call handles < 2³¹ logits.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
from jax.experimental.pallas import tpu as pltpu

from . import config as cfg
from . import pallas_gpu, pallas_tpu, reference

IMPLEMENTATIONS = ("auto", "xla", "pallas", "pallas_gpu", "pallas_tpu")


@dataclasses.dataclass(frozen=True)
class _Options:
  squared: bool
  activation: str
  implementation: str
  interpret: bool
  gpu_config: cfg.GpuConfig | None
  tpu_config: cfg.TpuConfig | None


def _gpu_fwd(o: _Options, interpret: bool):
  return functools.partial(pallas_gpu.soft_dice_stats_fwd, squared=o.squared,
                           activation=o.activation, config=o.gpu_config, interpret=interpret)


def _gpu_bwd(o: _Options, interpret: bool):
  return functools.partial(pallas_gpu.soft_dice_stats_bwd, squared=o.squared,
                           activation=o.activation, config=o.gpu_config, interpret=interpret)


def _tpu_interpret(interpret: bool, tpu_semantics: bool):
  # The TPU-semantics interpreter (SMEM, VMEM, grid order as on a TPU) runs on CPU, but
  # it is built on ordered io_callbacks, which a platform_dependent branch cannot hold;
  # there the generic Pallas interpreter is used.
  if interpret and tpu_semantics:
    return pltpu.InterpretParams()
  return bool(interpret)


def _tpu_fwd(o: _Options, interpret: bool, tpu_semantics: bool = False):
  return functools.partial(pallas_tpu.soft_dice_stats_fwd, squared=o.squared,
                           activation=o.activation, config=o.tpu_config,
                           interpret=_tpu_interpret(interpret, tpu_semantics))


def _tpu_bwd(o: _Options, interpret: bool, tpu_semantics: bool = False):
  return functools.partial(pallas_tpu.soft_dice_stats_bwd, squared=o.squared,
                           activation=o.activation, config=o.tpu_config,
                           interpret=_tpu_interpret(interpret, tpu_semantics))


def _xla_fwd(o: _Options):
  return functools.partial(reference.soft_dice_stats, squared=o.squared,
                           activation=o.activation)


def _xla_bwd(o: _Options):
  return functools.partial(reference.soft_dice_stats_bwd, squared=o.squared,
                           activation=o.activation)


def _dispatch(o: _Options, *args, backward: bool):
  gpu, tpu = (_gpu_bwd, _tpu_bwd) if backward else (_gpu_fwd, _tpu_fwd)
  xla = _xla_bwd if backward else _xla_fwd
  impl = o.implementation
  if impl == "pallas_gpu" or (impl == "pallas" and o.interpret):
    return gpu(o, o.interpret)(*args)
  if impl == "pallas_tpu":
    return tpu(o, o.interpret, tpu_semantics=True)(*args)
  if impl == "pallas":
    # No CPU branch: lowering "pallas" for CPU fails (use interpret=True there).
    return jax.lax.platform_dependent(
        *args, cuda=gpu(o, False), rocm=gpu(o, False), tpu=tpu(o, False))
  assert impl == "auto", impl
  return jax.lax.platform_dependent(
      *args, cuda=gpu(o, o.interpret), rocm=gpu(o, o.interpret), tpu=tpu(o, o.interpret),
      default=xla(o))


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


@functools.partial(jax.jit, static_argnames=("squared", "activation", "implementation",
                                             "interpret", "config"))
def soft_dice_stats(logits: jax.Array, labels: jax.Array, *, squared: bool = False,
                    activation: str = "softmax", implementation: str = "auto",
                    interpret: bool = False,
                    config: cfg.GpuConfig | cfg.TpuConfig | None = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-case, per-class soft-Dice statistics (Milletari et al., V-Net, 2016), fused.

    intersection[n, k] = Σ_s p·t,  pred_sum[n, k] = Σ_s p (Σ_s p² if squared),
    target_sum[n, k] = Σ_s t,
  with p = softmax over K (or per-channel sigmoid) in float32, t = one_hot(labels, K).
  A soft-Dice loss is then e.g. 1 − (2·I + ε) / (P + T + ε).

  Args:
    logits: (N, *S, K), spatial rank 1–3 (any works), float32 or bfloat16.
    labels: (N, *S) integers; values outside [0, K) count for no class.
    squared: V-Net's squared denominators, Σ p² in `pred_sum`.
    activation: "softmax" (classes exclusive) or "sigmoid" (one channel per class).
    implementation: "auto" — Pallas on CUDA/ROCm (Triton) and TPU (Mosaic), XLA
      reference elsewhere, decided by the platform the call is lowered for;
      "xla" — pure-JAX reference everywhere; "pallas" — the Pallas kernel of the
      lowering platform (GPU kernel in the interpreter when `interpret=True`);
      "pallas_gpu" / "pallas_tpu" — that kernel, whatever the platform.
    interpret: run Pallas kernels in the Pallas interpreter (e.g. on CPU, for tests);
      the TPU kernel uses the TPU-semantics interpreter.
    config: tile sizes (`config.GpuConfig` or `config.TpuConfig`) for the matching
      kernel; the heuristic default when None.

  Returns:
    (intersection, pred_sum, target_sum), each float32 (N, K). Differentiable in
    `logits` (the backward pass is a second fused kernel); labels get no gradient.
  """
  reference.check_args(logits, labels, activation)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if implementation == "xla":
    return reference.soft_dice_stats(logits, labels, squared=squared, activation=activation)
  o = _Options(
      squared=bool(squared), activation=activation, implementation=implementation,
      interpret=bool(interpret),
      gpu_config=config if isinstance(config, cfg.GpuConfig) else None,
      tpu_config=config if isinstance(config, cfg.TpuConfig) else None)
  return _fused(logits, labels, o)
