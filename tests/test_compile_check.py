"""`python -m benchmarks.compile_check`: the Pallas kernels compiled for an H100 (sm_90a)
on this CPU machine, by XLA's Triton pipeline and ptxas (the `[gpu-check]` tools).

A representative subset (float32 and bfloat16; conv3d forward (with PReLU: writing the
pre-activation too) + input gradient; soft-Dice forward + backward) with V-Net's 2x2x2 stride-2 128->256
down conv as the case that checks the shared-memory limit: a single 64x1024 tile there
needs 262,144 B of shared memory, more than the H100's 232,448 B (split-K keeps it
within).

The tools are installed by `python -m benchmarks.compile_check --install_tools`
(`.ci/run` does it); without them the launcher's one-line error is checked, and the
compile test fails saying so.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import compile_check
from benchmarks.compile_check import markdown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET = (r"conv3d/cpu_unet_l1_16to32_|conv3d/vnet_down3_k2s2_128to256_|"
          r"soft_dice/vnet_96\^3_b2_k3_\w+/squared=False")


def _launch(*flags, env=None):
  return subprocess.run([sys.executable, "-m", "benchmarks.compile_check", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.e2e
def test_subset_compiles_for_h100_without_spills(tmp_path):
  try:
    compile_check.tools_env()
  except compile_check.InputError as e:
    pytest.fail(f"{e} (.ci/run installs them)")
  out = tmp_path / "check.json"
  proc = _launch("--only", SUBSET, "--json", str(out))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  result = json.loads(out.read_text())
  rows = result["rows"]
  assert result["target"] == "h100" and result["summary"]["failures"] == 0
  # both dtypes, conv forward and both backward kernels (dx, dw), soft Dice both ways
  seen = {(r["case"].split("/")[0], r["dtype"], r["kernel"]) for r in rows}
  for dtype in ("float32", "bfloat16"):
    for kernel in ("medjax_conv3d", "medjax_conv3d_dx", "medjax_conv3d_dw"):
      assert ("conv3d", dtype, kernel) in seen
    for kernel in ("soft_dice_stats_fwd", "soft_dice_stats_bwd"):
      assert ("soft_dice", dtype, kernel) in seen
  for r in rows:
    assert "error" not in r, r
    assert r["spill_stores"] == r["spill_loads"] == 0, r
    assert 0 < r["smem"] <= compile_check.TARGETS["h100"].smem_per_block, r
    assert 0 < r["regs"] <= 255 and r["ctas_per_sm"] >= 1, r
  # the regression case: every kernel of the V-Net down conv fits, with room for 2+ CTAs/SM
  down = [r for r in rows if "vnet_down3" in r["case"]]
  assert len(down) == 6 and all(r["smem"] <= 96 * 1024 and r["ctas_per_sm"] >= 2 for r in down)
  # the conv loop over (tap x C_in chunk) is software-pipelined (cp.async multi-buffering)
  # and runs on Hopper's warpgroup MMA, in float32 (TF32) and bfloat16; the weight
  # gradient's row loop is pipelined too (its M is the C_in tile: wgmma from 64 channels)
  conv = [r for r in rows if r["kernel"] in ("medjax_conv3d", "medjax_conv3d_dx")]
  assert all(r["cp_async"] > 0 and r["mma"] == "wgmma" for r in conv), conv
  dw = [r for r in rows if r["kernel"] == "medjax_conv3d_dw"]
  assert dw and all(r["cp_async"] > 0 for r in dw), dw
  assert {r["mma"] for r in dw if "vnet_down3" in r["case"]} == {"wgmma"}
  # the table printed one line per kernel instance, with the summary
  assert proc.stdout.count("conv3d/vnet_down3") == 6
  assert f"{len(rows)} kernel instances" in proc.stdout
  # RESULTS.md's tables from the JSON: a summary line per kernel and dtype, one conv row per
  # layer and dtype with its three kernels, one soft-Dice row per case
  tables = markdown.tables(result)
  for kernel in ("medjax_conv3d", "medjax_conv3d_dx", "medjax_conv3d_dw", "soft_dice_stats_bwd"):
    assert f"| {kernel} | float32 | " in tables and f"| {kernel} | bfloat16 | " in tables
  conv_rows = [line for line in tables.splitlines() if line.startswith("| vnet_down3")]
  assert len(conv_rows) == 2 and all(line.count(" · ") == 15 for line in conv_rows)
  assert "| vnet_96^3_b2_k3_float32 | False | " in tables


@pytest.mark.e2e
def test_missing_tools_is_one_line(tmp_path):
  env = dict(os.environ, MEDJAX_GPU_CHECK_TOOLS=str(tmp_path / "none"))
  proc = _launch("--only", "vnet_down3", env=env)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0
  assert proc.stderr.startswith("error: the [gpu-check] tools") and "--install_tools" in proc.stderr


def test_bad_arguments_are_one_line():
  with pytest.raises(compile_check.InputError, match="--target='a100': expected one of h100"):
    compile_check.run("a100")
  with pytest.raises(compile_check.InputError, match="--dtypes='float16'"):
    compile_check.run("h100", dtypes=("float16",))
  with pytest.raises(compile_check.InputError, match=r"--only='\(': not a regular expression"):
    compile_check.run("h100", only="(")
  with pytest.raises(compile_check.InputError, match="--only='conv3d/nope' matches no case"):
    compile_check.run("h100", only="conv3d/nope")


def test_pins_and_occupancy():
  pins = compile_check.pinned_tools()
  assert all("==" in p for p in pins)
  assert {p.split("==")[0] for p in pins} == {
      "jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cuda-nvcc-cu12"}
  h100 = compile_check.TARGETS["h100"]
  # 4 warps: 128 registers -> 65536 / (128 * 128) = 4 CTAs; 255 -> 2 (rounded to 256/thread);
  # shared memory 100 KiB (+1 KiB reserved) -> 2; 8 warps, 64 registers -> 4
  assert compile_check.ctas_per_sm(128, 0, 4, h100) == 4
  assert compile_check.ctas_per_sm(255, 0, 4, h100) == 2
  assert compile_check.ctas_per_sm(32, 100 * 1024, 4, h100) == 2
  assert compile_check.ctas_per_sm(64, 0, 8, h100) == 4
  assert compile_check.ctas_per_sm(16, 0, 1, h100) == 32  # block slots


@pytest.mark.e2e
def test_full_compiles_the_whole_program(tmp_path):
  """--full: XLA's compile-only H100 compiles the whole forward + backward, Pallas and
  kernels="xla"; the Pallas one holds the 3 Triton kernels (forward, dx, dw) and no cuDNN
  call, the XLA one no Triton kernel."""
  compile_check.tools_env()
  out = tmp_path / "full.json"
  proc = _launch("--only", r"conv3d/cpu_unet_l1_16to32_16x32x32/bfloat16", "--full",
                 "--json", str(out))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  (row,) = json.loads(out.read_text())["whole"]
  assert row["pallas"]["kernels"]["__gpu$xla.gpu.triton"] == 3
  assert not any("cudnn" in k for k in row["pallas"]["kernels"]), row["pallas"]["kernels"]
  assert "__gpu$xla.gpu.triton" not in row["xla"]["kernels"]
  for v in ("pallas", "xla"):
    assert row[v]["bytes"] > row["floor_bytes"] > 0 and row[v]["lower_bound_ms"] > 0
  # no pad, slice, transpose or recompute around the kernels: a ReLU layer's forward +
  # backward moves 3x + 5y (x read twice, dx written; y written, read by the mask fusion,
  # dz written and read by dx and dw), within 2% (the weights), well under cuDNN's
  x = 2 * 16 * 32 * 32 * 16 * 2  # bfloat16 input (2, 16, 32, 32, 16)
  assert abs(row["pallas"]["bytes"] / (3 * x + 5 * (2 * x)) - 1) < 0.02, row["pallas"]
  assert row["pallas"]["bytes"] < 0.5 * row["xla"]["bytes"]
  roofline = markdown.roofline_table([row])
  assert "| cpu_unet_l1_16to32_16x32x32 | bfloat16 | 7 | 14 (1.8" in roofline
  assert re.search(r"\| 3 Triton \+ \d+ fusions \+ 0 cuDNN \|$", roofline), roofline


def test_markdown_of_a_missing_file_is_one_line(tmp_path, capsys):
  assert markdown.main(["markdown", str(tmp_path / "none.json")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "expected the --json file of benchmarks.compile_check" in err


HLO = """HloModule m

%fused (p: f32[4,8]) -> f32[4,8] {
  %p = f32[4,8]{1,0} parameter(0)
  ROOT %n = f32[4,8]{1,0} negate(%p)
}

ENTRY %main (x: f32[4,8], w: bf16[8,2]) -> (f32[4,8], bf16[8,2]) {
  %x = f32[4,8]{1,0} parameter(0)
  %w = bf16[8,2]{1,0} parameter(1)
  %f = f32[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fused
  %c = (bf16[8,2]{1,0}, u8[4096]{0}) custom-call(%f, %w), custom_call_target="__cudnn$conv"
  %g = bf16[8,2]{1,0} get-tuple-element(%c), index=0
  ROOT %t = (f32[4,8]{1,0}, bf16[8,2]{1,0}) tuple(%f, %g)
}
"""


def test_hlo_traffic_counts_each_kernel_once():
  kinds, moved = compile_check.whole.hlo_traffic(HLO)
  assert kinds == {"fusion:kLoop": 1, "__cudnn$conv": 1}
  # fusion: 128 B in + 128 B out; custom call: 128 + 32 B in, 32 B out (workspace not counted)
  assert moved == 128 + 128 + 128 + 32 + 32


def test_install_pins_skips_pip_when_every_pin_is_there_and_reports_a_failure_in_one_line(
    tmp_path, monkeypatch):
  from benchmarks.compile_check import tools
  from medjax.errors import InputError
  (tmp_path / "jax_cuda12_plugin-0.10.2.dist-info").mkdir()
  (tmp_path / "libtpu-0.0.42.dist-info").mkdir()
  calls = []
  monkeypatch.setattr(tools.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                      subprocess.CompletedProcess(cmd, 1, "", "ERROR: no such version\n"))
  pins = ["jax-cuda12-plugin==0.10.2", "libtpu==0.0.42"]
  assert tools.install_pins(tmp_path, pins, "the tools") == tmp_path and not calls
  with pytest.raises(InputError, match=r"^installing the tools into .* failed: ERROR: no such version$"):
    tools.install_pins(tmp_path, pins + ["triton==3.9.0"], "the tools")
  assert calls[0][-3:] == pins + ["triton==3.9.0"] and "--no-deps" in calls[0]
