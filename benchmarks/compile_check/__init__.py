"""Compile every Pallas-Triton kernel of medjax for an H100 (sm_90a) on a CPU-only machine.

Lowering is not compiling: `jax.export` for "cuda" only proves that a kernel
becomes Triton IR. This check runs the rest of the GPU toolchain without a GPU:

1. each kernel configuration the models use (`medjax_kernels.conv3d.bench_shapes`,
   forward and backward, and `medjax_kernels.soft_dice.bench_shapes`) is exported
   for "cuda"; every `__gpu$xla.gpu.triton` custom call carries its Triton IR, grid,
   `num_warps` and `num_stages` in its backend config;
2. that IR is compiled to PTX by XLA's *own* Triton pipeline (the compilation
   handler of the `jax-cuda12-plugin`/`jax-cuda12-pjrt` PJRT plugin, reached
   through `jax._src.lib.triton.compile`, which needs no device), which also
   returns the dynamic shared memory;
3. `ptxas -v --gpu-name=sm_90a` reports registers, spill stores/loads and stack.

A kernel fails the check when a step raises (e.g. `RESOURCE_EXHAUSTED`), when its
shared memory exceeds the H100's 232,448 B opt-in limit per block, or when it
spills registers. `ctas_per_sm` is the occupancy the registers, shared memory and
threads allow (CUDA occupancy rules for sm_90: 64 K registers, 228 KiB shared
memory with 1 KiB reserved per block, 2048 threads, 32 blocks per SM).

The tools (the `[gpu-check]` extra of setup.py, pinned: the plugin and PJRT of
the pinned jaxlib, and `nvidia-cuda-nvcc-cu12` for `ptxas` 12.9) are *not*
installed into the main environment: with the CUDA plugin present, every
`import jax` on a machine without CUDA prints a 26-line "Jax plugin configuration
error" traceback (JAX_PLATFORMS unset) or absl warnings (JAX_PLATFORMS=cpu) on
stderr. `install_tools` puts them into a side folder (`tools_dir()`), and
`tools_env` gives the environment of a child process that sees them.

The method and its tools: `benchmarks/PERF_BASELINE.md` (compile checks).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Optional

from benchmarks.compile_check import whole
from benchmarks.compile_check.cases import Case, all_cases, conv_cases, soft_dice_cases
from benchmarks.compile_check.kernels import (HEADER, KERNEL_DIRECTIONS, TARGETS, Target, check,
                                              compile_kernel, ctas_per_sm, format_row, summary,
                                              triton_calls, write_json)
from benchmarks.compile_check.tools import (EXTRA, TOOLS_ENV_VAR, find_ptxas, install_tools,
                                            pinned_tools, tools_dir, tools_env)
from medjax.errors import InputError

__all__ = ["Case", "EXTRA", "HEADER", "InputError", "KERNEL_DIRECTIONS", "TARGETS",
           "TOOLS_ENV_VAR", "Target", "all_cases", "check", "child_main", "compile_kernel",
           "conv_cases", "ctas_per_sm", "find_ptxas", "format_row", "install_tools",
           "pinned_tools", "run", "soft_dice_cases", "summary", "tools_dir", "tools_env",
           "triton_calls", "whole", "write_json"]


def run(target: str = "h100", only: str = "", dtypes: tuple[str, ...] = ("float32", "bfloat16"),
        json_path: Optional[str] = None, full: bool = False) -> int:
  """Runs the check in a child process that sees the `[gpu-check]` tools; prints one line
  per kernel instance and a summary; with `full`, also each case's whole forward +
  backward compiled by XLA (Pallas and `kernels="xla"`) with the HBM bytes moved
  (`whole.py`). Returns the exit status: 0 when every kernel compiles within the
  target's limits without spilling (and every whole program compiles), 1 otherwise.

  Raises:
    InputError: unknown target or dtype, a regex that matches no case, or the tools are
      missing (one line).
  """
  if target not in TARGETS:
    raise InputError(f"--target={target!r}: expected one of {', '.join(TARGETS)}")
  bad = [d for d in dtypes if d not in ("float32", "bfloat16")]
  if bad or not dtypes:
    raise InputError(f"--dtypes={','.join(dtypes)!r}: expected float32 and/or bfloat16")
  if only:
    try:
      re.compile(only)
    except re.error as e:
      raise InputError(f"--only={only!r}: not a regular expression ({e})") from None
  if not all_cases(tuple(dtypes), only):
    raise InputError(f"--only={only!r} matches no case (tags: conv3d/<bench shape>/<dtype>, "
                     "soft_dice/<bench shape>/squared=<bool>)")
  env = tools_env()
  spec = json.dumps(dict(target=target, only=only, dtypes=list(dtypes), json_path=json_path,
                         full=bool(full)))
  code = ("import sys; from benchmarks.compile_check import child_main; "
          "sys.exit(child_main(sys.argv[1]))")
  proc = subprocess.run([sys.executable, "-c", code, spec], env=env, stderr=subprocess.PIPE,
                        text=True)
  noise = re.compile(r"cudart_stub\.cc|absl::InitializeLog|^\s*$")
  for line in proc.stderr.splitlines():
    if not noise.search(line):
      print(line, file=sys.stderr)
  return proc.returncode


def child_main(spec_json: str) -> int:
  """The child process of `run` (the tools importable, JAX on CPU)."""
  import jax
  spec = json.loads(spec_json)
  target = TARGETS[spec["target"]]
  t0 = time.time()
  cases = all_cases(tuple(spec["dtypes"]), spec["only"])
  print(f"compile check for {target.name} ({target.gpu_name}): {len(cases)} cases; "
        f"jax {jax.__version__}; ptxas {find_ptxas()}", flush=True)
  print(HEADER, flush=True)
  try:
    rows = check(cases, target, report=lambda row: print(format_row(row), flush=True))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  s = summary(rows)
  print(f"\n{s['instances']} kernel instances ({s['distinct']} distinct): {s['failures']} failing "
        f"({s['spilling']} spilling); {time.time() - t0:.0f} s", flush=True)
  for r in rows:
    if r.get("error") and not r.get("dup"):
      print("FAILED " + format_row(r), flush=True)
  wholes = []
  if spec.get("full"):
    print(f"\nwhole forward + backward compiled by XLA for a compile-only {target.name}; MB moved "
          "by its kernels (x the fused floor), lower-bound ms:\n" + whole.WHOLE_HEADER, flush=True)
    for case in cases:
      wholes.append(whole.whole_row(case))
      print(whole.format_whole(wholes[-1]), flush=True)
    s["whole_failures"] = sum(1 for w in wholes if w.get("error"))
    print(f"\n{len(wholes)} whole programs: {s['whole_failures']} failing", flush=True)
  if spec["json_path"]:
    write_json(spec["json_path"], rows, dict(target=target.name, jax=jax.__version__,
                                              summary=s, only=spec["only"],
                                              dtypes=spec["dtypes"], whole=wholes))
  return 1 if s["failures"] or s.get("whole_failures") else 0
