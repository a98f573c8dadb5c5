"""`python -m benchmarks.compile_check --target tpu-v5e`: the Pallas kernels compiled
for a TPU v5e by libtpu's compile-only client on this CPU machine.

The case checked is the 3D U-Net's 128^3 3x3x3 32->32 layer, float32 and bfloat16,
forward and backward: a Mosaic conv holding whole padded 130x130 planes in VMEM
fails there with `RESOURCE_EXHAUSTED: CompileTimeScopedVmemOom`; the halo-blocked
kernel must compile. libtpu is installed by
`python -m benchmarks.compile_check --target tpu-v5e --install_tools` (`.ci/run`
does it); without it the compile test fails saying so (never a silent skip), and
the launcher's one-line error is checked.
"""
import json
import os
import subprocess
import sys

import pytest

from benchmarks.compile_check import tpu as compile_check_tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*flags, env=None):
  return subprocess.run([sys.executable, "-m", "benchmarks.compile_check", "--target",
                         "tpu-v5e", *flags], cwd=REPO, capture_output=True, text=True,
                        timeout=900, env=env)


@pytest.mark.e2e
def test_unet_128_conv_compiles_for_v5e(tmp_path):
  try:
    compile_check_tpu.tools_env()
  except compile_check_tpu.InputError as e:
    pytest.fail(f"{e} (.ci/run installs them)")
  out = tmp_path / "check.json"
  proc = _launch("--only", r"conv3d/unet3d_128_l0_32to32_128\^3/", "--dtypes",
                 "float32,bfloat16", "--json", str(out))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["topology"] == "v5e:2x2" and result["summary"]["failures"] == 0
  rows = {row["case"]: row["status"] for row in result["rows"]}
  assert rows == {f"conv3d/unet3d_128_l0_32to32_128^3/{dt}": "ok"
                  for dt in ("float32", "bfloat16")}
  assert "TPU v5 lite" in proc.stdout and "2 cases: 0 failing (0 VMEM OOM)" in proc.stdout


@pytest.mark.e2e
def test_missing_tools_is_one_line(tmp_path):
  env = dict(os.environ, MEDJAX_TPU_CHECK_TOOLS=str(tmp_path / "none"))
  proc = _launch("--only", "unet3d_128_l0_32to32", env=env)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0
  assert "libtpu==0.0.42" in proc.stderr and "--install_tools" in proc.stderr


def test_bad_arguments_and_vmem_figures():
  with pytest.raises(compile_check_tpu.InputError, match="--target='tpu-v4': expected one of"):
    compile_check_tpu.run("tpu-v4")
  with pytest.raises(compile_check_tpu.InputError, match="--dtypes='float16'"):
    compile_check_tpu.run(dtypes=("float16",))
  with pytest.raises(compile_check_tpu.InputError, match=r"--only='\(': not a regular"):
    compile_check_tpu.run(only="(")
  msg = ("RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom: Scoped allocation with size "
         "49.51M and limit 32.00M exceeded scoped vmem limit by 17.51M")
  assert compile_check_tpu.vmem_figures(msg) == "49.51M / 32.00M / 17.51M"


def test_pin_matches_setup_py_and_the_pinned_jax():
  """PINS is setup.py's [tpu-check] extra and the libtpu jax[tpu] of the pinned jax needs."""
  import ast
  import importlib.metadata
  tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
  extras = {k.value: ast.literal_eval(v) for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
  assert tuple(extras["tpu-check"]) == compile_check_tpu.PINS == ("libtpu==0.0.42",)
  req = [r for r in importlib.metadata.requires("jax") if r.startswith("libtpu")]
  assert req and req[0].split(";")[0].strip() == "libtpu==0.0.42.*"
