"""Compile every Pallas (Mosaic) kernel of medjax for a TPU on a CPU-only machine.

libtpu (the `tpu` extra of the pinned JAX: `libtpu==0.0.42` for jax 0.10.2)
carries a compile-only TPU client: a topology from
`jax.experimental.topologies.get_topology_desc(topology_name="v5e:2x2",
platform="tpu")` gives devices to place abstract inputs on, and
`jax.jit(f).lower(<ShapeDtypeStructs on topo.devices[0]>).compile()` runs the
whole TPU compiler, Mosaic included, with its VMEM checks (a kernel whose
buffers do not fit fails with `RESOURCE_EXHAUSTED: ... CompileTimeScopedVmemOom`).

Cases: for every `medjax_kernels.conv3d.bench_shapes.SHAPES` entry the gradient
of a loss through `conv3d(backend="pallas_tpu")` (the forward kernel, the
input-gradient kernel (with PReLU the forward kernel also writes the pre-activation),
plus the XLA weight gradient), and `soft_dice_stats(backend="pallas_tpu")` forward +
backward per `soft_dice.bench_shapes.SHAPES`, in float32 and bfloat16. One line
per case: ok / FAIL, compile seconds, the compiled program's HBM temporaries, and
for a VMEM OOM the sizes the compiler reports.

libtpu is *not* installed into the main environment: with it importable and
`JAX_PLATFORMS` unset, every `jax.devices()` on this machine tries to initialise a
TPU (libtpu looks up the accelerator type and worker hostnames, from the GCE
metadata server unless `TPU_SKIP_MDS_QUERY` is set, and prints a 6-line
`INVALID_ARGUMENT` error; measured 3.3 s against 3.0 s without it here, where no
metadata server answers). `install_tools` puts it into a side folder and the check
runs in a child process that sees it, with `JAX_PLATFORMS=cpu` and
`TPU_SKIP_MDS_QUERY=1` (the compile-only client needs no TPU and no network).

The method: `benchmarks/PERF_BASELINE.md` (compile checks).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Callable, Iterator, Optional

from medjax.errors import InputError

# The tools: libtpu of the pinned jax (jax[tpu]==0.10.2 requires libtpu==0.0.42.*).
PINS = ("libtpu==0.0.42",)
TOOLS_ENV_VAR = "MEDJAX_TPU_CHECK_TOOLS"
# --target -> libtpu topology name (one chip of it is compiled for).
TOPOLOGIES = {"tpu-v5e": "v5e:2x2", "tpu-v6e": "v6e:2x2"}
# stderr lines of libtpu's start-up that say nothing about the check
_NOISE = re.compile(r"Source Location Trace|libtpu_init_utils|^\s*$|absl::InitializeLog|"
                    r"Logging before InitGoogle|Failed to find host bounds|"
                    r"unexpected worker hostname")


# ----------------------------------------------------------------------------- the tools
def tools_dir() -> pathlib.Path:
  """$MEDJAX_TPU_CHECK_TOOLS, else `~/.cache/medjax/tpu-check/jax-<version>`."""
  if os.environ.get(TOOLS_ENV_VAR):
    return pathlib.Path(os.environ[TOOLS_ENV_VAR])
  import jax
  return pathlib.Path.home() / ".cache" / "medjax" / "tpu-check" / f"jax-{jax.__version__}"


def install_tools(target: Optional[pathlib.Path] = None) -> pathlib.Path:
  """`pip install --no-deps --target <tools_dir()>` the pinned libtpu (once)."""
  from benchmarks.compile_check import tools  # pylint: disable=g-import-not-at-top
  return tools.install_pins(pathlib.Path(target or tools_dir()), list(PINS), " ".join(PINS))


def tools_env(directory: Optional[pathlib.Path] = None) -> dict[str, str]:
  """The environment of a child process that can compile for TPU.

  Raises:
    InputError: libtpu is not installed there (one line that says how to install it).
  """
  d = pathlib.Path(directory or tools_dir())
  if not (d / "libtpu").is_dir():
    raise InputError(f"the TPU check's tools ({' '.join(PINS)}) are missing in {d}: run "
                     "`python -m benchmarks.compile_check --target tpu-v5e --install_tools` "
                     f"(or set {TOOLS_ENV_VAR})")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(d), env.get("PYTHONPATH", "")) if p)
  # no TPU, no metadata-server query, and no /tmp/libtpu_lockfile (which would let one
  # libtpu process per machine run: a second check, or a test beside a check, would abort)
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", TPU_SKIP_MDS_QUERY="1",
             ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  return env


# ----------------------------------------------------------------------------- the cases
def cases(dtypes: tuple[str, ...], put: Callable, only: str = "") -> Iterator[tuple]:
  """(tag, dtype, fn, abstract args) for every conv3d and soft-Dice bench case whose tag
  matches `only`; `put(shape, dtype)` makes an abstract input on the target device."""
  import jax
  import jax.numpy as jnp

  from medjax_kernels.conv3d import api as conv_api, bench_shapes as conv_shapes
  from medjax_kernels.soft_dice import api as sd_api, bench_shapes as sd_shapes
  pattern = re.compile(only) if only else None
  keep = lambda tag: pattern is None or pattern.search(tag)
  for name, spec in conv_shapes.SHAPES.items():
    for dt in dtypes:
      if not keep(tag := f"conv3d/{name}/{dt}"):
        continue
      c_in, k, c_out = spec["x"][-1], spec["k"], spec["c_out"]
      args = (put(spec["x"], dt), put((k, k, k, c_in, c_out), dt), put((c_out,), "float32"),
              put(conv_shapes.out_shape(spec), dt) if spec["residual"] else None,
              put((c_out,), "float32") if spec["activation"] == "prelu" else None)
      kw = dict(activation=spec["activation"], stride=spec["stride"], padding=spec["padding"],
                backend="pallas_tpu")

      def conv_loss(x, w, b, r, s, kw=kw):
        y = conv_api.conv3d(x, w, b, prelu_slope=s, residual=r, **kw)
        return jnp.sum(y.astype(jnp.float32) ** 2)
      yield tag, dt, jax.grad(conv_loss, argnums=(0, 1)), args
  for name, shape, kc, dt in sd_shapes.SHAPES:
    if dt not in dtypes or not keep(tag := f"soft_dice/{name}"):
      continue

    def dice_loss(x, lab):
      i, p, t = sd_api.soft_dice_stats(x, lab, backend="pallas_tpu")
      return jnp.mean(1.0 - (2.0 * i + 1e-5) / (p + t + 1e-5))
    yield tag, dt, jax.grad(dice_loss), (put((*shape, kc), dt), put(shape, sd_shapes.LABEL_DTYPE))


def vmem_figures(message: str) -> str:
  """The byte sizes a VMEM OOM message names (e.g. 'used 41.21M of 32.00M'), or ''."""
  sizes = re.findall(r"(\d+(?:\.\d+)?\s*[KMG]i?B?)\b", message)
  return " / ".join(dict.fromkeys(sizes))[:120]


def compile_case(fn: Callable, args: tuple) -> dict[str, Any]:
  """Compile `fn` for the device the args are placed on; the row's numbers."""
  import jax
  t = time.time()
  try:
    compiled = jax.jit(fn).lower(*args).compile()
  except Exception as e:  # noqa: BLE001 -- the compiler's message is the result
    msg = " ".join((str(e) or repr(e)).split())
    row = dict(status="FAIL", error=msg[:600], compile_s=round(time.time() - t, 1))
    if "Vmem" in msg or "VMEM" in msg:
      row.update(vmem_oom=True, vmem=vmem_figures(msg))
    return row
  row = dict(status="ok", compile_s=round(time.time() - t, 1))
  try:
    mem = compiled.memory_analysis()
    row["hbm_temp_bytes"] = int(mem.temp_size_in_bytes)
  except Exception:  # noqa: BLE001 -- an optional figure
    pass
  return row


def format_row(row: dict[str, Any]) -> str:
  temp = f"{row['hbm_temp_bytes'] / 2**20:.0f} MiB" if "hbm_temp_bytes" in row else "-"
  note = row.get("error", "")[:160]
  return (f"{row['case']:52s} {row['status']:4s} {row['compile_s']:7.1f} s  "
          f"HBM temp {temp:>9s}  {note}")


def child_main(spec_json: str) -> int:
  """The child process of `run` (libtpu importable, JAX on CPU)."""
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from jax.sharding import SingleDeviceSharding
  spec = json.loads(spec_json)
  topology = TOPOLOGIES[spec["target"]]
  try:
    topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # noqa: BLE001 -- e.g. a topology this libtpu does not know
    print(f"error: topology {topology!r}: {' '.join(str(e).split())[:300]}", file=sys.stderr)
    return 2
  dev = SingleDeviceSharding(topo.devices[0])
  put = lambda shape, dt: jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dt), sharding=dev)
  todo = list(cases(tuple(spec["dtypes"]), put, spec["only"]))
  if not todo:
    print(f"error: --only={spec['only']!r} matches no case", file=sys.stderr)
    return 2
  print(f"TPU compile check for {topology} ({topo.devices[0].device_kind}): {len(todo)} cases; "
        f"jax {jax.__version__}", flush=True)
  t0, rows = time.time(), []
  for tag, dt, fn, args in todo:
    row = dict(case=tag, dtype=dt, **compile_case(fn, args))
    rows.append(row)
    print(format_row(row), flush=True)
  fails = [r for r in rows if r["status"] != "ok"]
  oom = sum(1 for r in fails if r.get("vmem_oom"))
  print(f"\n{len(rows)} cases: {len(fails)} failing ({oom} VMEM OOM); "
        f"{time.time() - t0:.0f} s", flush=True)
  for r in fails:
    print("FAILED " + format_row(r), flush=True)
  if spec["json_path"]:
    from medjax.train.workdir import atomic_write_json
    atomic_write_json(spec["json_path"], dict(
        target=spec["target"], topology=topology, jax=jax.__version__, rows=rows,
        summary=dict(cases=len(rows), failures=len(fails), vmem_oom=oom)))
  return 1 if fails else 0


def run(target: str = "tpu-v5e", only: str = "",
        dtypes: tuple[str, ...] = ("float32", "bfloat16"), json_path: Optional[str] = None) -> int:
  """Runs the check in a child process that sees libtpu; prints one line per case and a
  summary. Returns the exit status: 0 when every case compiles, 1 on any failure
  (VMEM OOM included), 2 when the topology is unknown to libtpu or nothing matched.

  Raises:
    InputError: unknown target or dtype, a bad regex, or libtpu missing (one line).
  """
  if target not in TOPOLOGIES:
    raise InputError(f"--target={target!r}: expected one of {', '.join(TOPOLOGIES)}")
  if not dtypes or any(d not in ("float32", "bfloat16") for d in dtypes):
    raise InputError(f"--dtypes={','.join(dtypes)!r}: expected float32 and/or bfloat16")
  try:
    re.compile(only)
  except re.error as e:
    raise InputError(f"--only={only!r}: not a regular expression ({e})") from None
  env = tools_env()
  spec = json.dumps(dict(target=target, only=only, dtypes=list(dtypes), json_path=json_path))
  code = ("import sys; from benchmarks.compile_check.tpu import child_main; "
          "sys.exit(child_main(sys.argv[1]))")
  proc = subprocess.run([sys.executable, "-c", code, spec], env=env, stderr=subprocess.PIPE,
                        text=True)
  for line in proc.stderr.splitlines():
    if not _NOISE.search(line):
      print(line, file=sys.stderr)
  return proc.returncode
