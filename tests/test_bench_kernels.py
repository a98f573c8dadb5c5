"""`python -m benchmarks.bench_kernels` with its PyTorch conv3d baseline (`--torch`)."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import torch_conv3d
from medjax_kernels.conv3d import bench_shapes, reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("spec", [
    bench_shapes._s((2, 5, 6, 7, 4), 3, 8, activation="prelu", residual=True),  # V-Net unit
    bench_shapes._s((1, 7, 6, 5, 3), 3, 4, stride=2, activation="leaky_relu"),  # uneven SAME
    bench_shapes._s((1, 6, 6, 8, 5), 2, 4, stride=2, padding="VALID", activation="prelu"),
    bench_shapes._s((1, 4, 5, 6, 8), 1, 3, activation=None),  # 1x1x1 head
])
def test_torch_layer_equals_the_reference(spec):
  """The PyTorch layer the benchmark times computes the medjax layer (float32)."""
  t = torch_conv3d.make_inputs(spec, "float32")
  y = torch_conv3d.conv_fn(spec)(t["x"], t["w"], t["b"], t["r"], t["s"])
  to_ndhwc = lambda a: None if a is None else jnp.asarray(
      a.detach().cpu().permute(0, 2, 3, 4, 1).numpy())
  w = jnp.asarray(t["w"].detach().cpu().permute(2, 3, 4, 1, 0).numpy())
  want = reference.conv3d(
      to_ndhwc(t["x"]), w, jnp.asarray(t["b"].cpu().numpy()), activation=spec["activation"],
      prelu_slope=None if t["s"] is None else jnp.asarray(t["s"].cpu().numpy()),
      residual=to_ndhwc(t["r"]), stride=spec["stride"], padding=spec["padding"])
  got = np.asarray(to_ndhwc(y))
  assert got.shape == want.shape == bench_shapes.out_shape(spec)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4)


@pytest.mark.e2e
def test_bench_kernels_times_the_torch_baseline(tmp_path):
  """One small layer: the XLA rows and the PyTorch rows, forward and forward + backward, with
  the speed-up against the `lax` baseline of the same run; the ops in the order given."""
  out = tmp_path / "k.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.bench_kernels", "--ops=upconv,conv3d",
       "--filter=64to", "--reps=2", "--torch", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(out.read_text())["rows"]
  ops = [r["op"] for r in rows]  # in the order --ops gave
  assert ops[0] == "upconv"
  assert ops == ["upconv"] * ops.count("upconv") + ["conv3d"] * ops.count("conv3d")
  assert {r["shape"] for r in rows if r["op"] == "upconv"} == {"cpu_unet_up1_64to32_8x16x16"}
  rows = [r for r in rows if r["op"] == "conv3d"]
  assert {r["shape"] for r in rows} == {"cpu_unet_l2_64to64_8x16x16"}
  got = {(r["implementation"], r["direction"]) for r in rows}
  assert got == {(i, d) for i in ("lax", "xla", "torch") for d in ("fwd", "fwd+bwd")}
  for d in ("fwd", "fwd+bwd"):
    base = next(r for r in rows if r["implementation"] == "lax" and r["direction"] == d)
    torch_row = next(r for r in rows if r["implementation"] == "torch" and r["direction"] == d)
    assert 0 < torch_row["min_s"] <= torch_row["median_s"] <= torch_row["max_s"]
    assert np.isclose(torch_row["speedup_vs_xla"], base["median_s"] / torch_row["median_s"])
  assert "| torch | fwd+bwd |" in proc.stdout
  # the closing table: medjax's path against PyTorch per layer and direction
  ours = {r["direction"]: r for r in rows if r["implementation"] == "xla"}
  torch_rows = {r["direction"]: r for r in rows if r["implementation"] == "torch"}
  ratio = ours["fwd+bwd"]["median_s"] / torch_rows["fwd+bwd"]["median_s"]
  assert f"| cpu_unet_l2_64to64_8x16x16 | fwd+bwd | {1e3 * ours['fwd+bwd']['median_s']:.1f} " \
         f"| {1e3 * torch_rows['fwd+bwd']['median_s']:.1f} | {ratio:.2f}x |" in proc.stdout


def test_torch_ratios_pair_each_torch_row_with_the_medjax_row():
  from benchmarks import kernel_speed
  row = lambda impl, d, t: dict(op="conv3d", shape="s", implementation=impl, direction=d,
                                median_s=t)
  rows = [row("lax", "fwd", 4.0), row("xla", "fwd", 2.0), row("torch", "fwd", 1.0),
          row("xla", "fwd+bwd", 3.0), row("torch", "fwd+bwd", 6.0)]
  got = kernel_speed.torch_ratios(rows)
  assert [(r["direction"], r["ratio"]) for r in got] == [("fwd", 2.0), ("fwd+bwd", 0.5)]
