"""The `[gpu-check]` tools of the compile check: where they live, how they are installed,
and the environment of the child process that uses them (see the package docstring)."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
from typing import Optional

from medjax.errors import InputError

EXTRA = "gpu-check"
TOOLS_ENV_VAR = "MEDJAX_GPU_CHECK_TOOLS"


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
  return install_pins(pathlib.Path(target or tools_dir()), pinned_tools(), f"the [{EXTRA}] tools")


def install_pins(target: pathlib.Path, pins: list[str], what: str) -> pathlib.Path:
  """`pip install --no-deps --target target` the `name==version` pins, unless all are there.

  The compile checks' tools live in such a side folder, never in the main environment
  (a CUDA plugin or libtpu there would make every CPU `import jax` try that backend).
  """
  dist_info = lambda pin: "{}-{}.dist-info".format(*pin.replace("-", "_").split("=="))
  if all((target / dist_info(pin)).is_dir() for pin in pins):
    return target  # already there
  cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
         "--target", str(target), *pins]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
    raise InputError(f"installing {what} into {target} failed: {tail[0]}")
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
        f"`python -m benchmarks.compile_check --install_tools` (or set {TOOLS_ENV_VAR})")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(d), env.get("PYTHONPATH", "")) if p)
  env.update(JAX_PLATFORMS="cpu", JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1", TF_CPP_MIN_LOG_LEVEL="3",
             PTXAS=ptxas)
  return env
