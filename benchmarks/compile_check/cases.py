"""What the compile check compiles: one `Case` per bench shape and dtype, the gradient
of a loss through the op (so the forward and every backward kernel are in it)."""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Iterator, Optional


@dataclasses.dataclass
class Case:
  """One function to export: the gradient of a loss through the op, so that the
  forward and every backward kernel are in it."""
  tag: str  # "conv3d/<shape name>/<dtype>" or "soft_dice/<shape name>/squared=<b>"
  shape: str  # the input shape, for the table
  dtype: str
  fn: Callable  # through the Pallas kernels
  args: tuple
  xla_fn: Optional[Callable] = None  # the same through `kernels="xla"` (cuDNN on a GPU)
  floor_bytes: float = 0.0  # HBM bytes a fused forward + backward must move at least
  flops: float = 0.0  # of the forward + backward


def conv_cases(dtypes: tuple[str, ...]) -> Iterator[Case]:
  """`conv3d` forward and its full gradient (dx kernel; with PReLU the forward kernel also
  writes the pre-activation) per bench shape."""
  import jax
  import jax.numpy as jnp

  from medjax_kernels.conv3d import api, bench_shapes
  for name, spec in bench_shapes.SHAPES.items():
    for dt in dtypes:
      c_in, k, c_out = spec["x"][-1], spec["k"], spec["c_out"]
      sds = lambda shape, dtype=dt: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
      args = (sds(spec["x"]), sds((k, k, k, c_in, c_out)), sds((c_out,), "float32"),
              sds(bench_shapes.out_shape(spec)) if spec["residual"] else None,
              sds((c_out,), "float32") if spec["activation"] == "prelu" else None)
      kw = dict(activation=spec["activation"], stride=spec["stride"], padding=spec["padding"])

      def loss(x, w, b, r, s, kw=kw, **switch):
        y = api.conv3d(x, w, b, prelu_slope=s, residual=r, **kw, **switch)
        return jnp.sum(y.astype(jnp.float32) ** 2)

      pallas = functools.partial(loss, backend="pallas_gpu")
      xla = functools.partial(loss, kernels="xla")
      yield Case(f"conv3d/{name}/{dt}", "x".join(map(str, spec["x"])) + f" k{k} s{spec['stride']}"
                 f" ->{c_out}", dt, jax.grad(pallas, argnums=(0, 1)), args,
                 xla_fn=jax.grad(xla, argnums=(0, 1)),
                 floor_bytes=float(bench_shapes.bytes_moved(spec, dt, backward=True)),
                 flops=float(bench_shapes.flops(spec, backward=True)))


def soft_dice_cases(dtypes: tuple[str, ...]) -> Iterator[Case]:
  """`soft_dice_stats` forward and backward per bench shape, plain and squared."""
  import jax
  import jax.numpy as jnp

  from medjax_kernels.soft_dice import api, bench_shapes
  for name, shape, kc, dt in bench_shapes.SHAPES:
    if dt not in dtypes:
      continue
    for squared in (False, True):
      args = (jax.ShapeDtypeStruct((*shape, kc), jnp.dtype(dt)),
              jax.ShapeDtypeStruct(shape, jnp.dtype(bench_shapes.LABEL_DTYPE)))

      def loss(x, lab, squared=squared, **switch):
        i, p, t = api.soft_dice_stats(x, lab, squared=squared, **switch)
        return jnp.mean(1.0 - (2.0 * i + 1e-5) / (p + t + 1e-5))

      yield Case(f"soft_dice/{name}/squared={squared}", "x".join(map(str, (*shape, kc))), dt,
                 jax.grad(functools.partial(loss, backend="pallas_gpu")), args,
                 xla_fn=jax.grad(functools.partial(loss, kernels="xla")),
                 floor_bytes=float(bench_shapes.bytes_moved(shape, kc, dt, backward=True)))


def all_cases(dtypes: tuple[str, ...], only: str = "") -> list[Case]:
  """Every conv3d and soft-Dice case whose tag matches the regex `only`."""
  pattern = re.compile(only) if only else None
  cases = [*conv_cases(dtypes), *soft_dice_cases(dtypes)]
  return [c for c in cases if pattern is None or pattern.search(c.tag)]
