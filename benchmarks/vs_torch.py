"""medjax against PyTorch on this machine, each framework in its own plain Python process.

  python -m benchmarks.vs_torch --preset=perf_unet [--paths=library,launcher]
      [--steps=10] [--repeats=2] [--json=out.json]
  python -m benchmarks.vs_torch --preset=unet2d | resnet2d | unet3d
  python -m benchmarks.vs_torch --preset=inference_ct [--shape=200,512,512] [--batch_size=4]
  python -m benchmarks.vs_torch --config=experiments/configs/X.py[:variant] [--set FIELD=VALUE]

Prints one line per path, `<name> <path>: medjax <median> s, PyTorch <median> s, ratio
<medjax / PyTorch>`, and the whole record as JSON.

Training (`--preset` perf_unet, unet2d, resnet2d, unet3d, or a config): the
config's training step (model, loss, Adam: `benchmarks.train_speed`) against
its PyTorch twin (`benchmarks.torch_unet.build_model`, equal parameter counts
checked here) on random batches of the same shape. Inference (`inference_ct`):
sliding-window inference of one random `(D, H, W)` volume (default
200x512x512, a CT) by the default 3D U-Net (`experiments/configs/unet3d_synthetic.py`,
random weights, its patch size as the window), Gaussian blending, overlap 0.5,
`--batch_size` windows per call: `medjax.inference.sliding_window` against
MONAI's `sliding_window_inference` (`pip install monai==1.6.1`, the
`bench` extra) with the same network in PyTorch, both returning float32
softmax probabilities.

Every measurement is a fresh `python -c` process (never `python -m`, so no
launcher re-executes itself), alternating medjax and PyTorch `--repeats` times;
the timings of all repeats are pooled (median, quartiles, range). The
environments:

* medjax, path "library": what a user's own `python script.py` gets: no
  `GLIBC_TUNABLES` huge-page tunable (dropped if this launcher re-executed
  itself with it), glibc's default allocator (`medjax.host_memory` is opt-in);
* medjax, path "launcher": glibc's huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`),
  as `python -m experiments.main` runs (`experiments.host_allocator`);
* medjax, path "heap_on": the library path with `MEDJAX_HOST_HEAP=1` (`medjax.host_memory`'s
  heap settings);
* PyTorch: a plain process, what a PyTorch user gets (no `MEDJAX_HOST_HEAP`).

Besides wall time (noisy on a shared machine), every step reports counters that
load does not change much: CPU seconds (user, sys) and minor page faults per
step, and the resident memory after the steps (`benchmarks.usage`).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Any, Optional, Sequence

import numpy as np
from absl import flags

from experiments import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments", "configs")
PERF_UNET_SETS = (  # the PERF U-Net: features 16-32-64-128, 3x3x3, batch 2 of 64^3, soft Dice
    "model.features=16,32,64,128", "model.kernel_sizes=None", "model.pool_sizes=None",
    "patch_size=64,64,64", "global_batch_size=2", "num_classes=2",
    "class_names=('background','organ')", "label_map=0,1,1", "loss.name=dice", "loss.batch=False",
    "loss.include_background=True")
PRESETS = {
    "perf_unet": ("unet3d_synthetic.py", PERF_UNET_SETS),
    "unet3d": ("unet3d_synthetic.py", ()),
    "unet2d": ("unet2d_synthetic.py", ()),
    "resnet2d": ("resnet_patches2d.py", ()),
    "resnet3d": ("resnet_patches2d.py:3d", ()),
    "inference_ct": ("unet3d_synthetic.py", ()),
}
INFERENCE_PRESETS = ("inference_ct",)
HUGE_PAGES = "glibc.malloc.hugetlb=1"
PATHS = ("library", "launcher", "heap_on")
RESULT_TAG = "VS_TORCH_RESULT "

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", None, list(PRESETS), "a named benchmark (see the module doc)")
flags.DEFINE_string("config", None, "training: a config file `path.py[:variant]` instead of a preset")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE config override (repeatable)")
flags.DEFINE_list("paths", ["library"], f"medjax environments to time: {', '.join(PATHS)}")
flags.DEFINE_integer("steps", 10, "timed training steps per process (after one warm-up step)")
flags.DEFINE_integer("repeats", 2, "processes per framework and path, alternating")
flags.DEFINE_list("shape", ["200", "512", "512"], "inference: the volume (D, H, W)")
flags.DEFINE_integer("batch_size", 4, "inference: windows per network call")
flags.DEFINE_integer("volumes", 1, "inference: timed volumes per process (after a warm-up call)")
flags.DEFINE_integer("timeout", 7200, "seconds allowed to one process")
flags.DEFINE_string("json", None, "also write the record to this JSON file")


# ----------------------------------------------------------------------------- child side

def _config(spec: dict):
  from benchmarks import train_speed  # pylint: disable=import-outside-toplevel
  from medjax import config_files  # pylint: disable=import-outside-toplevel
  config = config_files.load(spec["config"])
  train_speed.apply_sets(config, spec.get("sets", ()))
  return config


def _train_medjax(spec: dict) -> dict:
  from benchmarks import train_speed  # pylint: disable=import-outside-toplevel
  out = train_speed.time_train_step(_config(spec), steps=spec["steps"], cache_timing=False)
  out.pop("state")
  return out


def _train_torch(spec: dict) -> dict:
  from benchmarks import torch_unet  # pylint: disable=import-outside-toplevel
  config = _config(spec)
  return torch_unet.time_training(
      config.model.to_dict(), config.loss.to_dict(), in_channels=int(config.get("in_channels", 1)),
      num_classes=int(config.num_classes),
      batch_shape=(int(config.global_batch_size),) + tuple(config.patch_size),
      learning_rate=float(config.optimizer.learning_rate), steps=spec["steps"],
      seed=int(config.seed))


def _infer_medjax(spec: dict) -> dict:
  from benchmarks import inference_speed  # pylint: disable=import-outside-toplevel
  return inference_speed.medjax_inference(_config(spec), spec["shape"], spec["batch_size"],
                                          spec["volumes"])


def _infer_torch(spec: dict) -> dict:
  from benchmarks import inference_speed  # pylint: disable=import-outside-toplevel
  return inference_speed.torch_inference(_config(spec), spec["shape"], spec["batch_size"],
                                         spec["volumes"])


CHILDREN = {("train", "medjax"): _train_medjax, ("train", "torch"): _train_torch,
            ("infer", "medjax"): _infer_medjax, ("infer", "torch"): _infer_torch}


def child() -> None:
  """Entry point of a measuring process: a JSON spec on stdin, one tagged JSON line out."""
  spec = json.loads(sys.stdin.readline())
  result = CHILDREN[(spec["kind"], spec["framework"])](spec)
  import jax  # pylint: disable=import-outside-toplevel  # loaded by both children anyway
  from medjax import host_memory  # pylint: disable=import-outside-toplevel
  result["host_memory"] = host_memory.status()
  result["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
  result["jax"] = jax.__version__
  print(RESULT_TAG + json.dumps(result, default=str), flush=True)


# ---------------------------------------------------------------------------- parent side

def child_env(framework: str, path: str, environ: Optional[dict] = None) -> dict:
  """The environment of one measuring process (see the module doc)."""
  env = dict(os.environ if environ is None else environ)
  tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":")
              if t and not t.startswith("glibc.malloc.hugetlb")]
  if framework == "medjax" and path == "launcher":
    tunables.append(HUGE_PAGES)
  if tunables:
    env["GLIBC_TUNABLES"] = ":".join(tunables)
  env.pop("MEDJAX_HOST_HEAP", None)
  if framework == "medjax" and path == "heap_on":
    env["MEDJAX_HOST_HEAP"] = "1"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
  return env


def run_child(spec: dict, env: dict, timeout: int) -> dict:
  """One measuring process; its result dict, or InputError with its last stderr line."""
  from medjax.errors import InputError  # pylint: disable=import-outside-toplevel
  cmd = [sys.executable, "-c", "from benchmarks import vs_torch; vs_torch.child()"]
  proc = subprocess.run(cmd, input=json.dumps(spec) + "\n", capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=timeout)
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT_TAG):
      return json.loads(line[len(RESULT_TAG):])
  tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
  raise InputError(f"{spec['framework']} {spec['kind']} process failed "
                   f"(exit {proc.returncode}): {tail}")


def _pooled(results: Sequence[dict], key: str) -> dict:
  from benchmarks.timing import spread  # pylint: disable=import-outside-toplevel
  values = np.concatenate([np.asarray(r[key], np.float64) for r in results])
  return {**spread(values, prefix=""), "n": int(values.size)}


def compare(name: str, spec: dict, paths: Sequence[str], repeats: int, timeout: int,
            echo=print) -> dict:
  """Alternates medjax (each path) and PyTorch processes; pooled medians and ratios."""
  timing_key = "step_times_s" if spec["kind"] == "train" else "volume_times_s"
  runs: dict[str, list] = {p: [] for p in paths}
  runs["torch"] = []
  for r in range(repeats):
    for path in list(paths) + ["torch"]:
      framework = "torch" if path == "torch" else "medjax"
      result = run_child({**spec, "framework": framework}, child_env(framework, path), timeout)
      runs[path].append(result)
      echo(f"  [{r + 1}/{repeats}] {path}: median {np.median(result[timing_key]):.3f} s, "
           f"{result.get('minor_faults_median', float('nan')):.0f} faults, "
           f"user {result.get('user_s_median', float('nan')):.2f} s, "
           f"sys {result.get('sys_s_median', float('nan')):.2f} s")
  torch_stats = _pooled(runs["torch"], timing_key)
  record: dict[str, Any] = {"name": name, "spec": spec, "torch": torch_stats, "paths": {},
                            "runs": runs}
  for path in paths:
    stats = _pooled(runs[path], timing_key)
    ratio = stats["median_s"] / torch_stats["median_s"]
    record["paths"][path] = {**stats, "ratio": ratio}
    echo(f"{name} {path}: medjax {stats['median_s']:.3f} s "
         f"(IQR {stats['p25_s']:.3f}-{stats['p75_s']:.3f}), PyTorch {torch_stats['median_s']:.3f} s "
         f"(IQR {torch_stats['p25_s']:.3f}-{torch_stats['p75_s']:.3f}), ratio {ratio:.2f}x")
  params = {p: {r.get("params") for r in rs} for p, rs in runs.items()}
  record["same_parameters"] = len(set().union(*params.values())) == 1
  if not record["same_parameters"]:
    echo(f"WARNING: parameter counts differ: {params}")
  return record


def _spec_from_flags() -> tuple[str, dict]:
  from medjax.errors import InputError  # pylint: disable=import-outside-toplevel
  if (FLAGS.preset is None) == (FLAGS.config is None):
    raise InputError("expected one of --preset or --config")
  if FLAGS.preset:
    config, sets = PRESETS[FLAGS.preset]
    path, _, variant = config.partition(":")
    spec_config = os.path.join(CONFIGS, path) + (f":{variant}" if variant else "")
    name = FLAGS.preset
  else:
    spec_config, sets, name = FLAGS.config, (), os.path.basename(FLAGS.config)
  spec = {"config": spec_config, "sets": list(sets) + list(FLAGS.set)}
  if FLAGS.preset in INFERENCE_PRESETS:
    try:
      shape = [int(s) for s in FLAGS.shape]
    except ValueError:
      raise InputError(f"--shape={','.join(FLAGS.shape)}: expected integers D,H,W") from None
    if len(shape) != 3 or min(shape) < 1:
      raise InputError(f"--shape={','.join(FLAGS.shape)}: expected three positive sizes D,H,W")
    spec.update(kind="infer", shape=shape, batch_size=FLAGS.batch_size, volumes=FLAGS.volumes)
  else:
    spec.update(kind="train", steps=FLAGS.steps)
  return name, spec


def main(argv) -> None:
  from medjax.errors import InputError  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    cli.exit_with_error(f"unexpected arguments: {' '.join(argv[1:])}")
  bad = sorted(set(FLAGS.paths) - set(PATHS))
  if bad or not FLAGS.paths:
    cli.exit_with_error(f"--paths={','.join(FLAGS.paths)}: expected some of {', '.join(PATHS)}")
  if FLAGS.repeats < 1 or FLAGS.steps < 1:
    cli.exit_with_error("--repeats and --steps: expected positive numbers")
  try:
    name, spec = _spec_from_flags()
    if spec["kind"] == "infer":
      from benchmarks import inference_speed  # pylint: disable=import-outside-toplevel
      inference_speed.require_monai()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    record = compare(name, spec, FLAGS.paths, FLAGS.repeats, FLAGS.timeout)
  except InputError as e:
    cli.exit_with_error(e)
  record.update(
      command=" ".join(["python -m benchmarks.vs_torch"] + sys.argv[1:]),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      machine={"processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count()},
      load_before=load, load_after=os.getloadavg() if hasattr(os, "getloadavg") else None)
  text = json.dumps(record, indent=1, default=str)
  print(text, flush=True)
  if FLAGS.json:
    from medjax.train.workdir import atomic_write_json  # pylint: disable=import-outside-toplevel
    atomic_write_json(FLAGS.json, json.loads(text))


if __name__ == "__main__":
  cli.run(main)
