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

Reference for the method: `shared/tools/compile_sm90.py` (issue 13).
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

from medjax.errors import InputError

TRITON_CALL = "__gpu$xla.gpu.triton"
EXTRA = "gpu-check"
TOOLS_ENV_VAR = "MEDJAX_GPU_CHECK_TOOLS"
# Which pass a kernel belongs to, by its name in the compiled program.
KERNEL_DIRECTIONS = {"medjax_conv3d": "fwd", "medjax_conv3d_recompute": "bwd",
                     "medjax_conv3d_dx": "bwd", "soft_dice_stats_fwd": "fwd",
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


# ----------------------------------------------------------------------------- the tools
def tools_dir() -> pathlib.Path:
  """Where `install_tools` puts the `[gpu-check]` packages: $MEDJAX_GPU_CHECK_TOOLS, else
  `~/.cache/medjax/gpu-check/jax-<version>` (one folder per pinned jax)."""
  if os.environ.get(TOOLS_ENV_VAR):
    return pathlib.Path(os.environ[TOOLS_ENV_VAR])
  import jax
  return pathlib.Path.home() / ".cache" / "medjax" / "gpu-check" / f"jax-{jax.__version__}"


def pinned_tools() -> list[str]:
  """The `[gpu-check]` requirements: from the checkout's setup.py (the one place that
  pins them; an editable install's metadata can be stale), else the installed metadata."""
  setup_py = pathlib.Path(__file__).resolve().parents[2] / "setup.py"
  if setup_py.is_file():
    for node in ast.walk(ast.parse(setup_py.read_text())):
      if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values):
          if isinstance(key, ast.Constant) and key.value == EXTRA:
            return list(ast.literal_eval(value))
  try:
    reqs = importlib.metadata.requires("medjax") or []
  except importlib.metadata.PackageNotFoundError:
    reqs = []
  pins = [r.split(";")[0].strip() for r in reqs
          if re.search(r"extra\s*==\s*[\"']" + re.escape(EXTRA) + r"[\"']", r)]
  if not pins:
    raise InputError(f"medjax lists no [{EXTRA}] extra (setup.py extras_require)")
  return pins


def install_tools(target: Optional[pathlib.Path] = None) -> pathlib.Path:
  """`pip install --no-deps --target <tools_dir()>` the pinned `[gpu-check]` packages.

  Does nothing when every pinned version is already there. No-deps: the plugin's own
  requirements are the CUDA runtime libraries, which the compile-only path does not load.
  """
  target = pathlib.Path(target or tools_dir())
  pins = pinned_tools()
  dist_info = lambda pin: "{}-{}.dist-info".format(*pin.replace("-", "_").split("=="))
  if all((target / dist_info(pin)).is_dir() for pin in pins):
    return target  # already there
  cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
         "--target", str(target), *pins]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
    raise InputError(f"installing the [{EXTRA}] tools into {target} failed: {tail[0]}")
  return target


def find_ptxas(extra_dirs: tuple[pathlib.Path, ...] = ()) -> Optional[str]:
  """`ptxas` from $PTXAS, the tools folder, an installed nvidia-cuda-nvcc wheel or PATH."""
  import shutil
  cands = [os.environ.get("PTXAS", "")]
  for d in (*extra_dirs, *map(pathlib.Path, sys.path)):
    cands.append(str(pathlib.Path(d) / "nvidia" / "cuda_nvcc" / "bin" / "ptxas"))
  cands.append(shutil.which("ptxas") or "")
  return next((c for c in cands if c and os.path.isfile(c)), None)


def tools_env(directory: Optional[pathlib.Path] = None) -> dict[str, str]:
  """The environment of a child process that can run the check.

  Raises:
    InputError: the tools are not installed (one line that says how to install them).
  """
  d = pathlib.Path(directory or tools_dir())
  plugin = d / "jax_plugins" / "xla_cuda12"
  ptxas = find_ptxas((d,))
  if not plugin.is_dir() or ptxas is None:
    raise InputError(
        f"the [{EXTRA}] tools (jax-cuda12-plugin/pjrt, ptxas) are missing in {d}: run "
        f"`python -m experiments.compile_check --install_tools` (or set {TOOLS_ENV_VAR})")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(d), env.get("PYTHONPATH", "")) if p)
  env.update(JAX_PLATFORMS="cpu", JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1", TF_CPP_MIN_LOG_LEVEL="3",
             PTXAS=ptxas)
  return env


# ----------------------------------------------------------------------------- the cases
@dataclasses.dataclass
class Case:
  """One function to export: the gradient of a loss through the op, so that the
  forward and every backward kernel are in it."""
  tag: str  # "conv3d/<shape name>/<dtype>" or "soft_dice/<shape name>/squared=<b>"
  shape: str  # the input shape, for the table
  dtype: str
  fn: Callable
  args: tuple


def conv_cases(dtypes: tuple[str, ...]) -> Iterator[Case]:
  """`conv3d` forward and its full gradient (dx kernel; PReLU recompute) per bench shape."""
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
      kw = dict(activation=spec["activation"], stride=spec["stride"],
                padding=spec["padding"], backend="pallas_gpu")

      def forward(x, w, b, r, s, kw=kw):
        return api.conv3d(x, w, b, prelu_slope=s, residual=r, **kw)

      def loss(x, w, b, r, s, forward=forward):
        return jnp.sum(forward(x, w, b, r, s).astype(jnp.float32) ** 2)

      yield Case(f"conv3d/{name}/{dt}", "x".join(map(str, spec["x"])) + f" k{k} s{spec['stride']}"
                 f" ->{c_out}", dt, jax.grad(loss, argnums=(0, 1)), args)


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
              jax.ShapeDtypeStruct(shape, jnp.int32))

      def forward(x, lab, squared=squared):
        return api.soft_dice_stats(x, lab, squared=squared, backend="pallas_gpu")

      def loss(x, lab, forward=forward):
        i, p, t = forward(x, lab)
        return jnp.mean(1.0 - (2.0 * i + 1e-5) / (p + t + 1e-5))

      yield Case(f"soft_dice/{name}/squared={squared}", "x".join(map(str, (*shape, kc))), dt,
                 jax.grad(loss), args)


def all_cases(dtypes: tuple[str, ...], only: str = "") -> list[Case]:
  """Every conv3d and soft-Dice case whose tag matches the regex `only`."""
  pattern = re.compile(only) if only else None
  cases = [*conv_cases(dtypes), *soft_dice_cases(dtypes)]
  return [c for c in cases if pattern is None or pattern.search(c.tag)]


# ----------------------------------------------------------------------------- one kernel
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


# ----------------------------------------------------------------------------- the check
def _register_cuda_plugin() -> None:
  from jax._src import xla_bridge
  from jax._src.lib import triton as jtriton
  xla_bridge._discover_and_register_pjrt_plugins()  # pylint: disable=protected-access
  if not jtriton.has_compilation_handler("cuda"):
    raise InputError(f"no Triton compilation handler for CUDA in this process: the [{EXTRA}] "
                     "tools must be importable (see medjax.bench.compile_check.tools_env)")


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


# ----------------------------------------------------------------------------- entry points
def run(target: str = "h100", only: str = "", dtypes: tuple[str, ...] = ("float32", "bfloat16"),
        json_path: Optional[str] = None) -> int:
  """Runs the check in a child process that sees the `[gpu-check]` tools; prints one line
  per kernel instance and a summary. Returns the exit status: 0 when every kernel
  compiles within the target's limits without spilling, 1 otherwise.

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
  spec = json.dumps(dict(target=target, only=only, dtypes=list(dtypes), json_path=json_path))
  code = ("import sys; from medjax.bench.compile_check import child_main; "
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
  if spec["json_path"]:
    write_json(spec["json_path"], rows, dict(target=target.name, jax=jax.__version__,
                                              summary=s, only=spec["only"],
                                              dtypes=spec["dtypes"]))
  return 1 if s["failures"] else 0
