"""The benchmarks' one timing helper (`benchmarks.timing`) and their launchers' bad-input lines.

Every launcher of `benchmarks/` follows `experiments.cli`: bad input ends in one
`error:` line and exit status 2, before any measurement starts.
"""
import json
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import kernel_speed, timing
from benchmarks.memory import fresh_process, inference as inference_memory, prepare, train
from medjax.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_spread_is_the_median_quartiles_and_range():
  got = timing.spread([5.0, 1.0, 4.0, 2.0, 3.0], prefix="step_")
  assert got == {"step_median_s": 3.0, "step_p25_s": 2.0, "step_p75_s": 4.0, "step_min_s": 1.0,
                 "step_max_s": 5.0}
  with pytest.raises(ValueError, match="no timed runs"):
    timing.spread([])


def test_measure_warms_up_then_times_each_call_with_its_sync():
  calls, synced = [], []

  def call():
    calls.append(len(calls))
    return len(calls)

  def slow_sync(result):  # inside the timed interval: every timed call takes >= 20 ms
    synced.append(result)
    time.sleep(0.02)
  got = timing.measure(call, reps=3, warmup=2, sync=slow_sync, prefix="step_")
  assert calls == [0, 1, 2, 3, 4] and synced == [1, 2, 3, 4, 5]
  assert set(got) == {"first_step_s", "step_median_s", "step_p25_s", "step_p75_s", "step_min_s",
                      "step_max_s"}
  assert 0.02 <= got["first_step_s"] and 0.02 <= got["step_min_s"] <= got["step_median_s"]
  assert got["step_median_s"] <= got["step_max_s"]
  first, times = timing.timed_calls(call, reps=2, warmup=0, sync=lambda _: None)
  assert first is None and len(times) == 2 and len(calls) == 7


def test_time_jitted_compiles_apart_and_times_the_compiled_function():
  x = jnp.ones((64, 64), jnp.float32)
  got = timing.time_jitted(lambda x: x @ x, (x,), reps=3)
  assert got["compile_s"] > 0 and got["first_s"] > 0
  assert 0 < got["min_s"] <= got["p25_s"] <= got["median_s"] <= got["p75_s"] <= got["max_s"]


def test_torch_sync_waits_only_on_cuda():
  class FakeCuda:
    synchronized = 0

    @staticmethod
    def is_available():
      return True

    @classmethod
    def synchronize(cls):
      cls.synchronized += 1

  class FakeTorch:
    cuda = FakeCuda
  timing.torch_sync(FakeTorch)("result")
  assert FakeCuda.synchronized == 1
  FakeCuda.is_available = staticmethod(lambda: False)
  timing.torch_sync(FakeTorch)("result")
  assert FakeCuda.synchronized == 1


def test_inference_memory_measures_a_small_volume():
  r = inference_memory.bench_inference((12, 12, 12), (8, 8, 8), classes=3, volumes=2,
                                       window_kwargs={"output": "labels"})
  assert r["input_bytes"] == 12 ** 3 * 4 and r["output_bytes"] == 12 ** 3  # uint8 labels
  assert len(r["seconds_all"]) == 2 and r["seconds_per_volume"] == np.median(r["seconds_all"])
  assert r["peak_beyond_input_bytes"] >= 0 and r["window_kwargs"] == {"output": "labels"}


@pytest.mark.parametrize("call,match", [
    (lambda: kernel_speed.bench_kernels(["conv3d", "nope"]), r"^--ops: unknown nope"),
    (lambda: kernel_speed.bench_kernels(dtype="float16"), r"^--dtype='float16'"),
    (lambda: kernel_speed.bench_kernels(reps=0), r"^--reps=0"),
    (lambda: inference_memory.bench_inference((8, 8, 8), (4, 4)), r"^--roi=4,4: expected 3"),
    (lambda: inference_memory.bench_inference((8, 8, 8), (4, 4, 4), predictor="cnn"),
     r"^--predictor='cnn'"),
    (lambda: inference_memory.bench_inference((8, 8, 8), (4, 4, 4), window_kwargs={"x": "1"}),
     r"^--set x=\.\.\.: not a keyword of sliding_window"),
    (lambda: inference_memory.bench_inference((8, 8, 8), (4, 4, 4),
                                              window_kwargs={"output": "nope"}),
     r"^sliding_window: output='nope'"),
    (lambda: prepare.measure((8, 32)), r"^--shape=8,32: expected three positive numbers"),
    (lambda: train.measure("/nonexistent", cases=(0,)), r"^--cases=0: expected positive"),
])
def test_bad_benchmark_arguments_are_one_line_input_errors(call, match):
  with pytest.raises(InputError, match=match):
    call()


@pytest.mark.e2e
def test_an_input_error_in_the_fresh_process_comes_back_as_one(tmp_path):
  with pytest.raises(InputError, match="no such folder"):
    fresh_process.run("benchmarks.memory.train", {
        "kind": "prepare", "manual_dir": str(tmp_path / "missing"), "data_dir": str(tmp_path)})


LAUNCHERS = {  # launcher: (bad flags, the expected start of its one error line)
    "bench_train": ([], "error: --config: expected an experiment config file"),
    "bench_kernels": (["--ops=conv3d,nope"], "error: --ops: unknown nope"),
    "compile_check": (["--target=h200x"], "error: --target='h200x': expected one of"),
    "inference_memory": (["--shape=a,b"], "error: --shape=a,b: expected comma-separated"),
    "prepare_memory": (["--target_spacing=1,1"], "error: --target_spacing=1.0,1.0: expected"),
    "train_memory": (["--cases=6,0"], "error: --cases=6,0: expected positive integers"),
}


@pytest.mark.e2e
def test_every_launcher_turns_bad_input_into_one_error_line():
  """All launchers at once (one process each, started together: the imports dominate)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = {name: subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", *flags], cwd=REPO,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
           for name, (flags, _) in LAUNCHERS.items()}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 2, (name, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith(LAUNCHERS[name][1]), (name, err[-2000:])
    assert out == "", (name, out)


@pytest.mark.e2e
def test_inference_memory_launcher_writes_its_json(tmp_path):
  out = tmp_path / "m.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.inference_memory", "--shape=10,10,10", "--roi=8,8,8",
       "--set", "dtype=float16", f"--json={out}"], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(out.read_text())
  assert r == json.loads(proc.stdout)
  assert r["shape"] == [10, 10, 10] and r["roi"] == [8, 8, 8]
  assert r["output_bytes"] == 10 ** 3 * 3 * 2  # float16 probabilities of 3 classes
