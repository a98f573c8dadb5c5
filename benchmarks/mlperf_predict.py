"""The MLPerf 3D U-Net step predicted from its compiled program, before any GPU/TPU run.

  python -m benchmarks.mlperf_predict [--targets h100,h100-8,tpu-v5e,tpu-v5e-8]
      [--kernels auto,xla] [--json OUT] [--markdown OUT]

For each target the MLPerf training step (`benchmarks.mlperf_step.abstract_step`:
the run's model, loss and optimizer, bfloat16 activations, batch 2 of 128^3 per
chip) is compiled by XLA for a device-less chip, in a child process that sees the
compile-only tools (`python -m benchmarks.compile_check --install_tools` and
`--target tpu-v5e --install_tools`): the H100 of `benchmarks.compile_check.whole`
(XLA's H100 SXM description; `1x8x1`: one host of 8) and libtpu's TPU v5e
(one chip of `v5e:2x2`, and `v5e:2x4`). From each compiled program:

* per-chip memory: `memory_analysis()` (arguments, outputs, temporaries);
* FLOPs: counted from the architecture (`step_flops`: 2 x the multiply-adds of every
  convolution, three times for forward, input and weight gradients), since XLA's
  `cost_analysis()` is empty on the compile-only GPU client and does not count a
  Pallas kernel (a custom call); XLA's figure is kept in the JSON where it has one;
* bytes: from the optimised HLO (`compile_check.whole.hlo_traffic`: every kernel reads
  its operands and writes its result once; reuse through caches not modelled), or
  `cost_analysis()`'s "bytes accessed" when larger;
* the roofline step time `max(FLOPs / peak, bytes / bandwidth)` with the peaks of
  `PEAKS`, the seconds per epoch (`168 // global batch` steps; evaluations not
  included) and the time to train at the reference's median of 2640 epochs
  (MLPerf's reference convergence points at batch 2, `rcps_unet3d.json`
  `unet3d_ref_2_fp32`, 87 runs; the RCPs at batch 32 have medians of 1901-2331).

Beside them `PUBLISHED`: MLPerf Training results for 3D U-Net (see its docstring) as
seconds per epoch. A target whose tools are missing or whose compile fails is a row
with its error.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from absl import flags

from experiments import cli
from medjax.errors import InputError

TRAIN_CASES = 168
MEDIAN_EPOCHS = 2640  # rcps_unet3d.json (mlperf-logging, training_1.0.0 .. 3.1.0): unet3d_ref_2_fp32

# target -> (platform, topology, chips)
TARGETS = {
    "h100": ("cuda", "1x1x1", 1),
    "h100-8": ("cuda", "1x8x1", 8),
    "tpu-v5e": ("tpu", "v5e:2x2", 1),  # one chip of a 2x2 host (libtpu's smallest v5e layout)
    "tpu-v5e-8": ("tpu", "v5e:2x4", 8),
}
# Peaks per chip: (bf16 FLOP/s, HBM bytes/s, source).
PEAKS = {
    "cuda": (8.0e14, 3.0e12, "H100 SXM as measured on an H100 machine (bf16 matmul 798 TFLOP/s, "
             "copy 3.0 TB/s; datasheet: 989 TFLOP/s dense, 3.35 TB/s)"),
    "tpu": (1.97e14, 8.19e11, "TPU v5e datasheet (cloud.google.com/tpu/docs/v5e): 197 TFLOP/s "
            "bf16, 819 GB/s HBM"),
}

# MLPerf Training results for 3D U-Net, computed from the submitted result logs with
# mlperf-logging 4.1.68 (`result_summarizer` olympic score: 40 runs, the 4 fastest and 4
# slowest dropped, minutes from run_start to run_stop; seconds per epoch: the median over
# the converged runs of their time / epochs to converge, evaluations included; epochs of
# 168 samples). Sources: github.com/mlcommons/training_results_v{1.0,3.0,4.0}, folders
# <org>/results/<system>/unet3d; regenerate with `benchmarks.mlperf_published`.
PUBLISHED = (
    dict(round="v4.0", system="NVIDIA eos_ngc24.04_mxnet", chips="8x H100-SXM5-80GB",
         global_batch=56, minutes=12.14, median_epochs=2060, s_per_epoch=0.342),
    dict(round="v3.0", system="NVIDIA dgxh100_ngc23.04_mxnet", chips="8x H100-SXM5-80GB",
         global_batch=56, minutes=12.10, median_epochs=1990, s_per_epoch=0.350),
    dict(round="v1.0", system="Google tpu-v4-128-JAX", chips="64x TPU v4",
         global_batch=32, minutes=27.52, median_epochs=2286, s_per_epoch=0.703),
    dict(round="v1.0", system="Google tpu-v4-1024-JAX", chips="512x TPU v4",
         global_batch=32, minutes=6.17, median_epochs=2234, s_per_epoch=0.135),
)


def step_flops(patch: int = 128, batch: int = 2, filters=(32, 64, 128, 256, 320),
               num_classes: int = 3) -> float:
  """FLOPs of one training step of `MLPerfUNet3D` on `batch` patches of `patch`^3: 2 x the
  multiply-adds of every convolution (3x3x3, 2x2x2 transposed, 1x1x1 head) in the forward
  pass, times 3 (forward, input gradient, weight gradient). Norms, activations, the loss
  and the optimizer (a few FLOPs per element or parameter) are left out."""
  macs, size, channels = 0, patch, 1
  skips = []
  for level, f in enumerate(filters):  # input block (stride 1), then the down blocks
    if level:
      size //= 2
    macs += size ** 3 * 27 * (channels * f + f * f)
    channels = f
    skips.append((size, f))
  size //= 2  # bottleneck
  macs += size ** 3 * 27 * (channels * filters[-1] + filters[-1] ** 2)
  for skip_size, f in reversed(skips):
    macs += size ** 3 * 8 * channels * f  # transposed conv, window 2 = stride
    size = skip_size
    macs += size ** 3 * 27 * (2 * f * f + f * f)
    channels = f
  macs += size ** 3 * channels * num_classes
  return 3 * 2 * float(macs) * batch


def child(spec_json: str) -> int:
  """Compiles the step for one target in this process (it sees the compile-only tools)."""
  from jax.experimental import topologies
  from benchmarks import mlperf_step
  from benchmarks.compile_check import whole
  spec = json.loads(spec_json)
  plat, topology, chips = TARGETS[spec["target"]]
  try:
    if plat == "cuda":
      topo = topologies.get_topology_desc(topology_name="h100", platform="cuda",
                                          target_config=whole.H100_TARGET_CONFIG,
                                          topology=topology)
    else:
      topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # noqa: BLE001 -- the client's message is the result
    print(json.dumps({"error": "topology: " + " ".join(str(e).split())[:300]}))
    return 0
  devices = list(topo.devices)[:chips]
  rows = []
  for kernels in spec["kernels"]:
    config = mlperf_step.step_config(patch=128, batch=2 * len(devices), kernels=kernels)
    row: dict[str, Any] = dict(kernels=kernels, chips=len(devices),
                               device=devices[0].device_kind)
    try:
      lowered = mlperf_step.abstract_step(config, devices)
      compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001
      row["error"] = " ".join((str(e) or repr(e)).split())[:400]
      rows.append(row)
      continue
    mem = compiled.memory_analysis()
    row["memory"] = {k: int(getattr(mem, k)) for k in (
        "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
        "alias_size_in_bytes") if hasattr(mem, k)}
    # the compiled program's cost; the compile-only GPU client has none: the lowered
    # program's (XLA's HLO cost analysis before optimisation, per chip after partitioning
    # by shard_map)
    for stage, program in (("compiled", compiled), ("lowered", lowered)):
      try:
        cost = program.cost_analysis()
      except Exception:  # noqa: BLE001
        cost = None
      cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
      if cost:
        break
    cost = cost or {}
    row["cost_from"] = stage if cost else None
    row["flops"] = float(cost.get("flops", 0.0))
    row["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
    row["hlo_bytes"] = whole.hlo_traffic(compiled.as_text())[1]
    rows.append(row)
  print(json.dumps({"rows": rows}))
  return 0


def tools_env(platform: str) -> dict[str, str]:
  """The child's environment: the `[gpu-check]` or the TPU check's tools."""
  if platform == "cuda":
    from benchmarks.compile_check import tools
    return tools.tools_env()
  from benchmarks.compile_check import tpu
  return tpu.tools_env()


def predict(target: str, kernels: tuple[str, ...]) -> dict[str, Any]:
  """One target's compiled rows and roofline figures (module docstring)."""
  plat, topology, chips = TARGETS[target]
  out: dict[str, Any] = dict(target=target, topology=topology)
  try:
    env = tools_env(plat)
  except InputError as e:
    return {**out, "error": str(e)}
  code = ("import sys; from benchmarks.mlperf_predict import child; "
          "sys.exit(child(sys.argv[1]))")
  spec = json.dumps(dict(target=target, kernels=list(kernels)))
  proc = subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True,
                        text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {**out, "error": f"child exited {proc.returncode}: {tail[:300]}"}
  result = json.loads(lines[-1])
  if "error" in result:
    return {**out, **result}
  return {**out, "rows": roofline(result["rows"], plat)}


def roofline(rows: list[dict], plat: str) -> list[dict]:
  """The rows of one target with the roofline figures added (module docstring)."""
  peak_flops, bandwidth, _ = PEAKS[plat]
  for r in rows:
    if "error" in r:
      continue
    flops = step_flops(batch=2)  # per chip: batch 2 on each
    moved = max(r["hlo_bytes"], r["bytes_accessed"])
    step_s = max(flops / peak_flops, moved / bandwidth)
    global_batch = 2 * r["chips"]
    steps = TRAIN_CASES // global_batch
    r.update(roofline_flops=flops, roofline_bytes=moved, step_s=step_s,
             bound="compute" if flops / peak_flops >= moved / bandwidth else "memory",
             per_chip_gib=sum(r["memory"].get(k, 0) for k in (
                 "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"))
             / 2 ** 30 - r["memory"].get("alias_size_in_bytes", 0) / 2 ** 30,
             s_per_epoch=steps * step_s,
             minutes_to_train=MEDIAN_EPOCHS * steps * step_s / 60)
  return rows


def markdown(results: list[dict]) -> str:
  """The prediction table and the published table (`benchmarks/RESULTS.md`)."""
  lines = ["| target | kernels | chips | per-chip memory (GiB) | GFLOP / step / chip | "
           "GB moved / step / chip | roofline step (ms) | bound | s / epoch (168 samples) | "
           f"min to train ({MEDIAN_EPOCHS} epochs) |", "|---|---|---|---|---|---|---|---|---|---|"]
  for res in results:
    for r in res.get("rows", [{"kernels": "-", "error": res.get("error", "")}]):
      if "error" in r:
        lines.append(f"| {res['target']} ({res['topology']}) | {r['kernels']} | | | | | | | | "
                     f"error: {r['error'][:120]} |")
        continue
      lines.append(
          f"| {res['target']} ({res['topology']}) | {r['kernels']} | {r['chips']} | "
          f"{r['per_chip_gib']:.1f} | {r['roofline_flops'] / 1e9:,.0f} | "
          f"{r['roofline_bytes'] / 1e9:.1f} | {1e3 * r['step_s']:.1f} | {r['bound']} | "
          f"{r['s_per_epoch']:.3f} | {r['minutes_to_train']:.1f} |")
  lines += ["", "| round | system | chips | global batch | score (min) | median epochs | "
            "s / epoch |", "|---|---|---|---|---|---|---|"]
  for p in PUBLISHED:
    lines.append(f"| {p['round']} | {p['system']} | {p['chips']} | {p['global_batch']} | "
                 f"{p['minutes']:.2f} | {p['median_epochs']} | {p['s_per_epoch']:.3f} |")
  return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS
flags.DEFINE_list("targets", list(TARGETS), f"some of {', '.join(TARGETS)}")
flags.DEFINE_list("kernels", ["auto", "xla"], "kernel switches to compile")
flags.DEFINE_string("json", None, "write the results to this JSON file")
flags.DEFINE_string("markdown", None, "write the tables to this Markdown file")
flags.DEFINE_string("from_json", None, "recompute the figures and tables from the compiled rows "
                    "of an earlier --json (no compile)")


def main(argv) -> None:
  del argv
  try:
    unknown = [t for t in FLAGS.targets if t not in TARGETS]
    if unknown:
      raise InputError(f"--targets: unknown {', '.join(unknown)}; expected some of "
                       f"{', '.join(TARGETS)}")
    results = []
    if FLAGS.from_json:
      with open(FLAGS.from_json) as f:
        results = [{**res, "rows": roofline(res["rows"], TARGETS[res["target"]][0])}
                   if "rows" in res else res for res in json.load(f)]
    for target in ([] if FLAGS.from_json else FLAGS.targets):
      results.append(predict(target, tuple(FLAGS.kernels)))
      print(json.dumps(results[-1]), flush=True)
    table = markdown(results)
    print(table)
    for path, text in ((FLAGS.json, json.dumps(results, indent=1)), (FLAGS.markdown, table)):
      if path:
        with open(path, "w") as f:
          f.write(text)
  except InputError as e:
    cli.exit_with_error(e)


if __name__ == "__main__":
  cli.run(main)
