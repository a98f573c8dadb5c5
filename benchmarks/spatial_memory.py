"""Per-device memory of a spatially partitioned MLPerf-like 3D U-Net training step, from
XLA's deviceless compiles (no GPU or TPU needed).

The step is medjax's training step (`medjax.train.step.make_train_step` under
`DataParallel.spmd`, the loop's own) on a mesh `('data', 'spatial')` of 8 compile-only
devices: an H100 node (`topology="1x8x1"` of the deviceless CUDA client, the H100 SXM
description of `benchmarks.compile_check.whole`) or a TPU v5e 2x4 slice (libtpu's
compile-only client, `benchmarks.compile_check.tpu`). `spatial` devices split the depth
of each patch (`medjax.spatial`), `8 / spatial` data groups each take `batch` patches.

The model stands in for the MLPerf Training reference `Unet3D` (mlcommons/training
`image_segmentation/pytorch`): `medjax.models.UNet(spatial_dims=3, features=(32, 64,
128, 256, 320, 320), norm="instance")`, two 3x3x3 conv + instance norm + ReLU per level,
3 classes. Its activations have the reference's sizes at every level; it goes down by
max pooling and up by 2x2x2 transposed convolutions where the reference has stride-2
3x3x3 convolutions and transposed convolutions, so its parameters differ slightly.
bfloat16 activations, float32 parameters, Dice + cross-entropy loss, SGD with momentum
0.9 (the reference's recipe), kernels "auto" (the Pallas kernels on slabs, `spatial`
"manual" mode) or "xla" (XLA's SPMD partitioner, "auto" mode).

Per-device memory is what XLA plans for one device of the compiled program
(`memory_analysis()`): temporaries + arguments + outputs - outputs aliased to the
donated state. Each case compiles in a child process that sees the compile tools.

    python -m benchmarks.spatial_memory --patches 128,256,512 --spatial 1,2,4,8 --batch 1 \\
        --kernels auto,xla --target h100 --json /tmp/spatial_memory.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from medjax.errors import InputError

FEATURES = (32, 64, 128, 256, 320, 320)
NUM_CLASSES = 3
DEVICES = 8
TARGETS = {"h100": "1x8x1", "tpu-v5e": "v5e:2x4"}
GIB = 2 ** 30


def mlperf_like_unet(kernels: str):
  """The stand-in of the MLPerf `Unet3D` (see the module docstring)."""
  from medjax.models import UNet  # pylint: disable=g-import-not-at-top
  return UNet(spatial_dims=3, features=FEATURES, num_classes=NUM_CLASSES, norm="instance",
              dtype="bfloat16", kernels=kernels)


def target_devices(target: str) -> list:
  """The 8 compile-only devices of `target` (in a process that sees its tools)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if target == "h100":
    from benchmarks.compile_check.kernels import _register_cuda_plugin  # pylint: disable=g-import-not-at-top
    from benchmarks.compile_check.whole import H100_TARGET_CONFIG  # pylint: disable=g-import-not-at-top
    _register_cuda_plugin()
    return list(topologies.get_topology_desc(
        topology_name="h100", platform="cuda", target_config=H100_TARGET_CONFIG,
        topology=TARGETS[target]).devices)
  return list(topologies.get_topology_desc(topology_name=TARGETS[target], platform="tpu").devices)


def compile_step(devices: Sequence[Any], *, patch: int, batch: int, spatial: int,
                 kernels: str) -> dict[str, Any]:
  """Compiles the training step for `devices` and returns XLA's memory plan per device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from medjax import losses, parallel, spatial as spatial_lib  # pylint: disable=g-import-not-at-top
  from medjax.train import config_check  # pylint: disable=g-import-not-at-top
  from medjax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  from medjax.train.step import make_train_step  # pylint: disable=g-import-not-at-top

  model = mlperf_like_unet(kernels)
  shape = (patch, patch, patch)
  config_check.check_spatial(model, shape, 1, spatial)
  dp = parallel.DataParallel("shard_map", devices=list(devices),
                             mesh={"data": -1, "spatial": spatial}, kernels=kernels)
  tx = optax.sgd(0.8, momentum=0.9)

  def init():
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 32, 1)), train=False)
    return TrainState.create(params=variables["params"], batch_stats={}, tx=tx)

  replicated = NamedSharding(dp.mesh, P())
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                       jax.eval_shape(init))
  n = batch * dp.num_data
  image = jax.ShapeDtypeStruct((n,) + shape + (1,), jnp.float32)
  label = jax.ShapeDtypeStruct((n,) + shape, jnp.int32)
  place = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
      dp.mesh, spatial_lib.batch_spec(x, shape, parallel.AXIS) if spatial > 1 else P(
          parallel.AXIS)))
  step = dp.spmd(make_train_step(model, losses.get_loss("dice_ce", kernels=kernels), seed=0,
                                 partition=dp.partition), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step.trace(state, {"image": place(image), "label": place(label)}).lower().compile()
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  row = {k: int(getattr(m, k)) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                         "output_size_in_bytes", "alias_size_in_bytes")}
  row["per_device_bytes"] = (row["temp_size_in_bytes"] + row["argument_size_in_bytes"]
                             + row["output_size_in_bytes"] - row["alias_size_in_bytes"])
  row.update(compile_s=round(seconds, 1), data=dp.num_data, device=str(devices[0].device_kind),
             params=int(sum(x.size for x in jax.tree.leaves(state.params))))
  return row


def child_main(spec_json: str) -> int:
  """One case in a child process (the compile tools importable): prints one JSON row."""
  spec = json.loads(spec_json)
  row = dict(spec)
  try:
    row.update(compile_step(target_devices(spec["target"]), patch=spec["patch"],
                            batch=spec["batch"], spatial=spec["spatial"],
                            kernels=spec["kernels"]))
    row["status"] = "ok"
  except InputError as e:
    row.update(status="invalid", error=str(e))
  except Exception as e:  # noqa: BLE001 -- the compiler's message is the result
    row.update(status="FAIL", error=" ".join((str(e) or repr(e)).split())[:400])
  print(json.dumps(row), flush=True)
  return 0


def _tools_env(target: str) -> dict[str, str]:
  if target == "h100":
    from benchmarks.compile_check import tools  # pylint: disable=g-import-not-at-top
    return tools.tools_env()
  from benchmarks.compile_check import tpu  # pylint: disable=g-import-not-at-top
  return tpu.tools_env()


def run_case(spec: dict, timeout: Optional[float] = None) -> dict:
  """Runs one case in a child process; its row (status FAIL on a crash or timeout)."""
  code = ("import sys; from benchmarks.spatial_memory import child_main; "
          "sys.exit(child_main(sys.argv[1]))")
  try:
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)],
                          env=_tools_env(spec["target"]), capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(spec, status="FAIL", error=f"compile timed out after {timeout:.0f} s")
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if not lines:
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:400]
    return dict(spec, status="FAIL", error=f"child exited {proc.returncode}: {tail}")
  return json.loads(lines[-1])


def add_ratios(rows: list[dict]) -> None:
  """`vs_one_device`: per-device bytes over those of spatial=1 (same target, kernels,
  patch and batch)."""
  base = {(r["target"], r["kernels"], r["patch"], r["batch"]): r.get("per_device_bytes")
          for r in rows if r["spatial"] == 1 and r["status"] == "ok"}
  for r in rows:
    b = base.get((r["target"], r["kernels"], r["patch"], r["batch"]))
    if r["status"] == "ok" and b:
      r["vs_one_device"] = round(r["per_device_bytes"] / b, 3)


def markdown(rows: list[dict]) -> str:
  """The table of `benchmarks/RESULTS.md`: GiB per device and the share of spatial=1."""
  head = ("| target | kernels | patch | batch / data group | spatial | data | per device GiB "
          "| temp GiB | x one device | compile s |\n|---|---|---|---|---|---|---|---|---|---|")
  lines = [head]
  for r in rows:
    if r["status"] == "ok":
      lines.append(f"| {r['target']} | {r['kernels']} | {r['patch']}^3 | {r['batch']} | "
                   f"{r['spatial']} | {r['data']} | {r['per_device_bytes'] / GIB:.2f} | "
                   f"{r['temp_size_in_bytes'] / GIB:.2f} | {r.get('vs_one_device', '-')} | "
                   f"{r['compile_s']:.0f} |")
    else:
      why = "cannot split (see note)" if r["status"] == "invalid" else r["error"][:80]
      lines.append(f"| {r['target']} | {r['kernels']} | {r['patch']}^3 | {r['batch']} | "
                   f"{r['spatial']} | - | {r['status']}: {why} | | | |")
  return "\n".join(lines)


def _ints(text: str, flag: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v]
  except ValueError:
    raise InputError(f"{flag}={text!r}: expected comma-separated integers") from None
  if not values or min(values) < 1:
    raise InputError(f"{flag}={text!r}: expected positive integers")
  return values


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == "--child":
    return child_main(argv[1])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--patches", default="128,256,512")
  parser.add_argument("--spatial", default="1,2,4,8")
  parser.add_argument("--batch", default="1", help="patches per data group, e.g. 1,2")
  parser.add_argument("--kernels", default="auto,xla")
  parser.add_argument("--target", default="h100", help=", ".join(TARGETS))
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per compile")
  parser.add_argument("--json", default="", help="write the rows here (JSON)")
  args = parser.parse_args(argv)
  try:
    patches, sizes = _ints(args.patches, "--patches"), _ints(args.spatial, "--spatial")
    batches = _ints(args.batch, "--batch")
    kernels = [k for k in args.kernels.split(",") if k]
    if not kernels or set(kernels) - {"auto", "xla", "pallas"}:
      raise InputError(f"--kernels={args.kernels!r}: expected auto, xla and/or pallas")
    if args.target not in TARGETS:
      raise InputError(f"--target={args.target!r}: expected one of {', '.join(TARGETS)}")
    if any(DEVICES % s for s in sizes):
      raise InputError(f"--spatial={args.spatial!r}: expected divisors of {DEVICES}")
    _tools_env(args.target)  # the tools are there, or one line that says how to install them
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
  machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
  rows = []
  for kernel in kernels:
    for patch in patches:
      for batch in batches:
        for size in sizes:
          spec = dict(target=args.target, kernels=kernel, patch=patch, batch=batch, spatial=size)
          row = run_case(spec, args.timeout)
          row.update(date=stamp, machine=machine, load=os.getloadavg()[0])
          rows.append(row)
          print(json.dumps(row), flush=True)
          if args.json:
            add_ratios(rows)
            with open(args.json, "w") as f:
              json.dump(rows, f, indent=1)
  add_ratios(rows)
  print(markdown(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
