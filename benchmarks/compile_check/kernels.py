"""One Triton kernel through XLA's Triton pipeline and ptxas: registers, spills, shared
memory, occupancy, pipelining and MMA kind; the table lines and the summary."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import tempfile
import time
from typing import Any, Callable

from benchmarks.compile_check.cases import Case
from benchmarks.compile_check.tools import EXTRA, find_ptxas
from medjax.errors import InputError

TRITON_CALL = "__gpu$xla.gpu.triton"
# Which pass a kernel belongs to, by its name in the compiled program.
KERNEL_DIRECTIONS = {"medjax_conv3d": "fwd", "medjax_conv3d_dx": "bwd",
                     "medjax_conv3d_dw": "bwd", "soft_dice_stats_fwd": "fwd",
                     "soft_dice_stats_bwd": "bwd"}


@dataclasses.dataclass(frozen=True)
class Target:
  """A GPU the kernels are compiled for (limits from the CUDA occupancy tables)."""
  name: str
  arch: str  # compute capability for XLA's Triton pipeline
  gpu_name: str  # ptxas --gpu-name
  smem_per_block: int  # opt-in dynamic shared memory limit per block, bytes
  smem_per_sm: int
  smem_reserved_per_block: int
  regs_per_sm: int
  max_threads_per_sm: int
  max_blocks_per_sm: int
  sm_count: int


TARGETS = {
    "h100": Target(name="h100", arch="9.0", gpu_name="sm_90a", smem_per_block=232448,
                   smem_per_sm=233472, smem_reserved_per_block=1024, regs_per_sm=65536,
                   max_threads_per_sm=2048, max_blocks_per_sm=32, sm_count=132),
}


def triton_calls(fn: Callable, args: tuple) -> list[dict[str, Any]]:
  """The Triton custom calls of `jax.jit(fn)` exported for "cuda", in program order."""
  import jax
  from jax._src.interpreters import mlir as jmlir
  from jax._src.lib.mlir import ir
  exp = jax.export.export(
      jax.jit(fn), platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(*args)
  out = []
  with jmlir.make_ir_context():
    module = ir.Module.parse(exp.mlir_module())

    def walk(op):
      op = op.operation if hasattr(op, "operation") else op
      if (op.name == "stablehlo.custom_call" and
          ir.StringAttr(op.attributes["call_target_name"]).value == TRITON_CALL):
        cfg = ir.DictAttr(op.attributes["mhlo.backend_config"])
        out.append(dict(
            name=ir.StringAttr(cfg["name"]).value, ir=ir.StringAttr(cfg["ir"]).value_bytes,
            num_warps=ir.IntegerAttr(cfg["num_warps"]).value,
            num_stages=ir.IntegerAttr(cfg["num_stages"]).value,
            grid=tuple(ir.IntegerAttr(cfg[k]).value for k in ("grid_x", "grid_y", "grid_z"))))
      for region in op.regions:
        for block in region.blocks:
          for o in block.operations:
            walk(o)

    walk(module.operation)
  return out


def ptxas_stats(ptxas: str, ptx: str, gpu_name: str) -> dict[str, Any]:
  """Registers, spill bytes, stack and static shared memory from `ptxas -v`."""
  with tempfile.TemporaryDirectory() as td:
    src = os.path.join(td, "k.ptx")
    pathlib.Path(src).write_text(ptx)
    p = subprocess.run([ptxas, "-v", f"--gpu-name={gpu_name}", src, "-o",
                        os.path.join(td, "k.cubin")], capture_output=True, text=True)
  log = p.stderr + p.stdout
  if p.returncode:
    return dict(error="ptxas: " + " ".join(log.split())[-300:])
  g = lambda pat: int(m.group(1)) if (m := re.search(pat, log)) else 0
  return dict(regs=g(r"Used (\d+) registers"), spill_stores=g(r"(\d+) bytes spill stores"),
              spill_loads=g(r"(\d+) bytes spill loads"), stack=g(r"(\d+) bytes stack frame"),
              static_smem=g(r"(\d+) bytes smem"))


def ctas_per_sm(regs: int, smem: int, num_warps: int, target: Target) -> int:
  """Blocks of this kernel that fit on one SM at once (registers, shared memory,
  threads, block slots); registers are allocated per warp in units of 256."""
  threads = 32 * num_warps
  regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
  by_regs = target.regs_per_sm // (regs_per_warp * num_warps)
  by_smem = target.smem_per_sm // (smem + target.smem_reserved_per_block)
  return max(0, min(by_regs, by_smem, target.max_threads_per_sm // threads,
                    target.max_blocks_per_sm))


def compile_kernel(call: dict[str, Any], target: Target, ptxas: str) -> dict[str, Any]:
  """XLA's Triton pipeline -> PTX -> ptxas for one custom call; the row's numbers."""
  from jax._src.lib import triton as jtriton
  t = time.time()
  try:
    res = jtriton.compile("cuda", call["ir"], target.arch, num_warps=call["num_warps"],
                          num_ctas=1, num_stages=call["num_stages"])
  except Exception as e:  # noqa: BLE001 -- the compiler's message is the result
    msg = " ".join((str(e) or repr(e)).split())
    return dict(error="triton: " + msg[-300:], compile_s=round(time.time() - t, 2))
  row: dict[str, Any] = dict(smem=int(res.smem_bytes), compile_s=round(time.time() - t, 2))
  row["cp_async"] = len(re.findall(r"^\s*cp\.async\.", res.asm, re.M))
  row["mma"] = ("wgmma" if re.search(r"^\s*wgmma\.mma_async", res.asm, re.M) else
                "mma.sync" if re.search(r"^\s*mma\.sync", res.asm, re.M) else "-")
  row.update(ptxas_stats(ptxas, res.asm, target.gpu_name))
  if "error" in row:
    return row
  smem = row["smem"] + row["static_smem"]
  row["ctas_per_sm"] = ctas_per_sm(row["regs"], smem, call["num_warps"], target)
  problems = []
  if smem > target.smem_per_block:
    problems.append(f"shared memory {smem} B > {target.smem_per_block} B")
  if row["spill_stores"] or row["spill_loads"]:
    problems.append(f"spills {row['spill_stores']}/{row['spill_loads']} B")
  if problems:
    row["error"] = "; ".join(problems)
  return row


def _register_cuda_plugin() -> None:
  from jax._src import xla_bridge
  from jax._src.lib import triton as jtriton
  xla_bridge._discover_and_register_pjrt_plugins()  # pylint: disable=protected-access
  if not jtriton.has_compilation_handler("cuda"):
    raise InputError(f"no Triton compilation handler for CUDA in this process: the [{EXTRA}] "
                     "tools must be importable (see benchmarks.compile_check.tools_env)")


def check(cases: list[Case], target: Target,
          report: Callable[[dict[str, Any]], None] = lambda row: None) -> list[dict[str, Any]]:
  """Rows (one per kernel instance of every case) with the compiler's numbers.

  Each row: case, shape, dtype, direction ("fwd"/"bwd"), kernel, grid, num_warps,
  num_stages, regs, spill_stores, spill_loads, smem, ctas_per_sm, cp_async (asynchronous
  global->shared copies in the PTX: > 0 when Triton software-pipelined the loads), mma
  ("wgmma": Hopper's warpgroup MMA, "mma.sync": the Ampere one, "-": no tensor-core dot),
  compile_s, and `error` when the kernel failed the check. Identical kernels (same IR and launch
  parameters) are compiled once; later rows carry `dup: True`. `report` is called
  with each row as it is done.
  """
  _register_cuda_plugin()
  ptxas = find_ptxas()
  if ptxas is None:
    raise InputError("no ptxas found: set PTXAS or install the [gpu-check] tools")
  seen: dict[str, dict[str, Any]] = {}
  rows = []
  for case in cases:
    base = dict(case=case.tag, shape=case.shape, dtype=case.dtype)
    try:
      calls = triton_calls(case.fn, case.args)
    except Exception as e:  # noqa: BLE001 -- a lowering failure is a result of the check
      row = dict(base, direction="-", error="lowering: " + " ".join(str(e).split())[:300])
      rows.append(row)
      report(row)
      continue
    for call in calls:
      key = _key(call)
      row = dict(base, direction=KERNEL_DIRECTIONS.get(call["name"], "?"), kernel=call["name"],
                 grid=list(call["grid"]), num_warps=call["num_warps"],
                 num_stages=call["num_stages"])
      if key in seen:
        row.update({k: v for k, v in seen[key].items() if k not in row}, dup=True)
      else:
        seen[key] = compile_kernel(call, target, ptxas)
        row.update(seen[key])
      rows.append(row)
      report(row)
  return rows


def _key(call: dict[str, Any]) -> str:
  return hashlib.sha1(call["ir"] + bytes([call["num_warps"], call["num_stages"]])).hexdigest()


HEADER = (f"{'case':56s} {'dir':3s} {'grid':>15s} {'w':>1s} {'s':>1s} {'regs':>4s} "
          f"{'spill st/ld':>11s} {'smem':>7s} {'cta/SM':>6s} {'cp.async':>8s} {'mma':>8s} {'s':>5s}  note")


def format_row(row: dict[str, Any]) -> str:
  """One table line: case, direction, grid, warps, stages, registers, spills, shared
  memory, CTAs per SM, compile seconds, and the error if any."""
  if "grid" not in row:
    return f"{row['case']:56s} {row['direction']:3s} {row.get('error', '')}"
  grid = "(" + ",".join(map(str, row["grid"])) + ")"
  num = lambda k: str(row[k]) if k in row else "-"
  spill = f"{row['spill_stores']}/{row['spill_loads']}" if "spill_stores" in row else "-"
  note = ("(dup) " if row.get("dup") else "") + row.get("error", "")
  return (f"{row['case']:56s} {row['direction']:3s} {grid:>15s} {row['num_warps']:>1d} "
          f"{row['num_stages']:>1d} {num('regs'):>4s} {spill:>11s} {num('smem'):>7s} "
          f"{num('ctas_per_sm'):>6s} {num('cp_async'):>8s} {num('mma'):>8s} {num('compile_s'):>5s}"
          f"  {note}")


def summary(rows: list[dict[str, Any]]) -> dict[str, int]:
  """Counts: kernel instances, distinct kernels, failures (errors incl. spills), spills."""
  distinct = [r for r in rows if not r.get("dup")]
  return dict(instances=len(rows), distinct=len(distinct),
              failures=sum(1 for r in distinct if r.get("error")),
              spilling=sum(1 for r in distinct if r.get("spill_stores") or r.get("spill_loads")))


def write_json(path: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
  from medjax.train.workdir import atomic_write_json
  atomic_write_json(path, json.loads(json.dumps(dict(meta, rows=rows), default=str)))
