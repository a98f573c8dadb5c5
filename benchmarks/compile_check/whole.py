"""The whole forward + backward of a case compiled by XLA for a compile-only H100, and the
HBM bytes its kernels move against the floor (`--full` of `benchmarks.compile_check`).

XLA's deviceless GPU compile: `jax.experimental.topologies.get_topology_desc` with the
H100 SXM device description (the fields of XLA's `h100_sxm.txtpb` spec) gives a device
with no GPU behind it; `jax.jit(f).lower(<ShapeDtypeStructs on it>).compile()` runs
XLA's whole GPU pipeline (fusion, layout assignment, cuDNN/Triton/emitter kernels,
its own resource checks) and returns the optimized HLO.

Bytes moved, an estimate from that HLO: every kernel of the entry computation (a
fusion, custom call, copy, ...) reads its operands and writes its result once
(`hlo_traffic`); tuple outputs count without cuDNN's u8 workspace. Reuse through L2
and re-reads inside a kernel (the conv's input rows, read once per C_out block) are
not modelled. The floor is what a fused forward + backward must move at least
(`bench_shapes.bytes_moved(..., backward=True)`); the lower-bound time is
`max(bytes / 3.0 TB/s, flops / peak)` with an H100's measured copy bandwidth and bf16
matmul rate (3.0 TB/s, 798 TFLOP/s; `benchmarks/RESULTS.md`, static roofline), TF32 at
half the bf16 rate.
"""
from __future__ import annotations

import collections
import functools
import re
import time
from typing import Any, Callable

from benchmarks.compile_check.cases import Case

H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 feature_extension: ACCELERATED_FEATURES }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
  thread_dim_limit_x: 1024 thread_dim_limit_y: 1024 thread_dim_limit_z: 64
  device_vendor: "NVIDIA Corporation" platform_version: "Compute Capability 9.0a"
  device_address_bits: 64 name: "NVIDIA H100 80GB HBM3"
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
HBM_BYTES_PER_S = 3.0e12
PEAK_FLOPS = {"bfloat16": 8.0e14, "float32": 4.0e14}

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s([a-z][\w\-]*)\((.*?)\)")
_FREE = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element", "after-all",
         "partition-id", "replica-id", "iota"}


@functools.cache
def h100_device():
  """The compile-only H100 (no GPU behind it)."""
  from jax.experimental import topologies
  return topologies.get_topology_desc(topology_name="h100", platform="cuda",
                                      target_config=H100_TARGET_CONFIG,
                                      topology="1x1x1").devices[0]


def _type_bytes(text: str, skip_u8: bool = False) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(text):
    if skip_u8 and dtype == "u8":
      continue
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


def hlo_traffic(hlo: str) -> tuple[dict[str, int], int]:
  """Kernels of the entry computation by kind, and the bytes they read and write."""
  entry = hlo[hlo.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  sizes: dict[str, int] = {}
  kinds: collections.Counter = collections.Counter()
  moved = 0
  for line in entry.splitlines()[1:]:
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, type_text, opcode, operands = m.groups()
    sizes[name] = _type_bytes(type_text, skip_u8=type_text.startswith("("))
    if opcode in _FREE:
      continue
    if opcode == "custom-call":
      kinds[re.search(r'custom_call_target="([^"]+)"', line).group(1)] += 1
    elif opcode == "fusion":
      kinds["fusion:" + (re.search(r"kind=(\w+)", line) or ["", "?"])[1]] += 1
    else:
      kinds[opcode] += 1
    moved += sizes[name] + sum(sizes.get(o, 0) for o in re.findall(r"%([\w.\-]+)", operands))
  return dict(kinds), moved


def compile_whole(fn: Callable, args: tuple) -> dict[str, Any]:
  """`fn` compiled by XLA for the compile-only H100: status, seconds, kernels, bytes."""
  import jax
  sharding = jax.sharding.SingleDeviceSharding(h100_device())
  avals = [None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
           for a in args]
  t = time.time()
  try:
    hlo = jax.jit(fn).trace(*avals).lower().compile().as_text()
  except Exception as e:  # noqa: BLE001 -- XLA's message (e.g. RESOURCE_EXHAUSTED) is the result
    return dict(error="XLA: " + " ".join((str(e) or repr(e)).split())[:300],
                seconds=round(time.time() - t, 1))
  kinds, moved = hlo_traffic(hlo)
  return dict(seconds=round(time.time() - t, 1), kernels=kinds, bytes=moved)


def whole_row(case: Case) -> dict[str, Any]:
  """The Pallas and the XLA version of a case, compiled whole, against the floor."""
  row: dict[str, Any] = dict(case=case.tag, dtype=case.dtype, floor_bytes=case.floor_bytes,
                             flops=case.flops)
  for label, fn in (("pallas", case.fn), ("xla", case.xla_fn)):
    if fn is None:
      continue
    r = compile_whole(fn, case.args)
    row[label] = r
    if "bytes" in r:
      r["x_floor"] = round(r["bytes"] / case.floor_bytes, 2) if case.floor_bytes else None
      r["lower_bound_ms"] = round(1e3 * max(r["bytes"] / HBM_BYTES_PER_S,
                                            case.flops / PEAK_FLOPS[case.dtype]), 4)
  errors = [f"{k}: {row[k]['error']}" for k in ("pallas", "xla") if "error" in row.get(k, {})]
  if errors:
    row["error"] = "; ".join(errors)
  return row


WHOLE_HEADER = (f"{'case':56s} {'floor MB':>9s} | {'pallas MB':>9s} {'x':>5s} {'ms':>7s} "
                f"| {'xla MB':>9s} {'x':>5s} {'ms':>7s} | pallas kernels")


def format_whole(row: dict[str, Any]) -> str:
  """One line: floor, and per version bytes moved, x floor, lower-bound ms; kernels."""
  def part(label):
    r = row.get(label, {})
    if "bytes" not in r:
      return f"{'-':>9s} {'-':>5s} {'-':>7s}"
    return f"{r['bytes'] / 1e6:9.1f} {r['x_floor'] or 0:5.2f} {r['lower_bound_ms']:7.3f}"
  kernels = ", ".join(f"{k.replace('__gpu$xla.gpu.', '').replace('__cudnn$', 'cudnn:')} {v}"
                      for k, v in sorted(row.get("pallas", {}).get("kernels", {}).items()))
  return (f"{row['case']:56s} {row['floor_bytes'] / 1e6:9.1f} | {part('pallas')} | "
          f"{part('xla')} | {kernels} {row.get('error', '')}")
