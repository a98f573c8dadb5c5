#!/usr/bin/env bash
# One command on one GPU (an H100 with JAX 0.11 / CUDA 13 / Python 3.12 and PyTorch
# preinstalled, no package registry): the compiled kernel tests, the kernel
# microbenchmarks and the training-throughput rows, all in one results file.
#
#   benchmarks/gpu_bench.sh [--out FILE] [--wheels DIR] [--dry-run]
#   benchmarks/gpu_bench.sh --fetch-wheels [--wheels DIR]   # here, with a registry: the
#       pure-Python packages the GPU image lacks, as Python 3.12 wheels (carry DIR along)
#
# Steps (each with its own time limit, all within BUDGET_S=480 s; a failing step is recorded
# and the next one runs; a step the budget has no room for is recorded as skipped):
#   1. env:     python, jax, jaxlib, torch versions and nvidia-smi
#   2. tests:   tests/test_kernel_conv3d.py + tests/test_kernel_soft_dice.py with the Triton
#               kernels compiled (MEDJAX_KERNEL_TESTS=compiled, JAX_PLATFORMS=cuda)
#   3. kernels: python -m benchmarks.bench_kernels --shapes all --torch, float32 and bfloat16
#               (Pallas vs the XLA/cuDNN path vs PyTorch's conv3d (cuDNN), with the device's
#               measured peaks): soft Dice first, then the 128^3/96^3 network layers; its JSON
#               is rewritten after every row, so a step cut short by its limit keeps its rows
#   4. mlperf:  python -m benchmarks.mlperf_step: the MLPerf 3D U-Net training step (batch 2 of
#               128^3, bf16) with kernels auto and xla against the reference model in PyTorch
#               on the same card (bf16 autocast): samples/s and peak device memory
#   5. train:   python -m benchmarks.bench_train, 3D U-Net (with --torch: PyTorch on the
#               same card) and V-Net at 128^3, float32 and bfloat16, kernels pallas and xla
# Everything lands in one JSON file (default gpu_bench_<UTC date>.json): each step's
# command, exit status, seconds, output tail and parsed JSON.
#
# --dry-run: no GPU needed; prints every command with its environment, runs none of the
# steps, and writes the results file with each step marked "dry-run" (what
# tests/test_gpu_bench.py checks on CPU).
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT_FILE="$REPO/gpu_bench_$STAMP.json"
WHEELS="$REPO/.whl"
DRY=0
FETCH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_FILE="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --fetch-wheels) FETCH=1; shift ;;
    *) echo "error: unknown argument '$1' (expected --out FILE, --wheels DIR, --dry-run, --fetch-wheels)" >&2
       exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"

# The packages of setup.py's install_requires that the GPU image does not hold (its list:
# the device library's KINDS.md, 2026-11-17), and what they need that it lacks too, at the
# versions the CPU suite runs (resolved from this environment's metadata, 2026-11-26).
MISSING_WHEELS=(
  ml-collections==1.1.0 tensorflow-datasets==4.9.10 array-record==0.8.6 grain==0.2.18
  tensorboardX==2.6.5 nibabel==5.4.2 pydicom==3.0.2 pynrrd==1.1.3
  dm-tree==0.1.10 docstring-parser==0.18.0 googleapis-common-protos==1.76.0
  immutabledict==4.3.1 importlib-resources==7.1.0 portpicker==1.6.0 promise==2.3
  simple-parsing==0.1.9 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2
)
if [ "$FETCH" = 1 ]; then
  mkdir -p "$WHEELS"
  for w in "${MISSING_WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d "$WHEELS" "$w" 2>/dev/null && continue
    # no wheel published (promise): build one here; pure Python only (py3-none-any)
    "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$w" 2>/dev/null \
      && ls "$WHEELS"/"$(echo "${w%%==*}" | tr - _)"-*-none-any.whl >/dev/null 2>&1 \
      || { echo "error: no pure-Python wheel for $w" >&2; exit 1; }
  done
  du -sh "$WHEELS"
  exit 0
fi

# Environment: carried wheels into a private folder; medjax and medjax_kernels (= kernels/)
# from this checkout, without pip install.
SITE="$(mktemp -d)"
STEPS="$(mktemp -d)"
trap 'rm -rf "$SITE" "$STEPS"' EXIT
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1 && [ "$DRY" = 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "$WHEELS"/*.whl || { echo "error: installing the wheels of $WHEELS failed" >&2; exit 1; }
fi
ln -s "$REPO/kernels" "$SITE/medjax_kernels"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export MEDJAX_COMPILATION_CACHE_DIR="$SITE/jax_cache"
if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
else
  export JAX_PLATFORMS=cuda
fi
cd "$REPO"

# The whole run stays within BUDGET_S (8 minutes): a step gets at most what is left, and
# a step with less than 20 s left is recorded as skipped.
BUDGET_S="${BUDGET_S:-480}"
START_S=$(date +%s)

# step NAME LIMIT_S JSON_FILE_OR_- COMMAND...: runs (or, dry, prints) one step and records it.
step() {
  local name="$1" limit="$2" json="$3"; shift 3
  local t0 rc left
  echo "== $name: $*" >&2
  printf '%q ' "$@" > "$STEPS/$name.cmd"  # shell-quoted: the exact arguments
  echo "$name" >> "$STEPS/order"
  printf '%s\n' "${json}" > "$STEPS/$name.jsonpath"
  : > "$STEPS/$name.log"; echo 0 > "$STEPS/$name.s"
  if [ "$DRY" = 1 ]; then
    echo "dry-run" > "$STEPS/$name.rc"
    return
  fi
  left=$(( BUDGET_S - ($(date +%s) - START_S) ))
  if [ "$left" -lt 20 ]; then
    echo "skipped" > "$STEPS/$name.rc"
    return
  fi
  [ "$left" -lt "$limit" ] && limit="$left"
  t0=$(date +%s)
  timeout "$limit" "$@" > "$STEPS/$name.log" 2>&1
  rc=$?
  echo "$rc" > "$STEPS/$name.rc"
  echo $(( $(date +%s) - t0 )) > "$STEPS/$name.s"
  tail -n 5 "$STEPS/$name.log" >&2
}

step env 30 - bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
  $PY -c 'import sys, jax, jaxlib; print(sys.version.split()[0], jax.__version__, jaxlib.__version__, jax.devices())'; \
  $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())'"
step tests 120 - \
  env MEDJAX_KERNEL_TESTS=compiled "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_conv3d.py tests/test_kernel_soft_dice.py
for dt in float32 bfloat16; do
  step "kernels_$dt" 100 "$STEPS/kernels_$dt.json" \
    "$PY" -m benchmarks.bench_kernels --shapes all --dtype "$dt" --reps 5 --torch \
    --ops soft_dice,conv3d,upconv --json "$STEPS/kernels_$dt.json"
done
step mlperf_step 150 "$STEPS/mlperf_step.json" \
  "$PY" -m benchmarks.mlperf_step --patch 128 --batch 2 --kernels auto,xla --dtype bfloat16 \
  --steps 5 --warmup 2 --torch --json "$STEPS/mlperf_step.json"
UNET_128=(--config=experiments/configs/unet3d_synthetic.py --set model.features=32,64,128,256
          --set model.kernel_sizes=None --set model.pool_sizes=None --set patch_size=128,128,128
          --set global_batch_size=2 --set num_classes=2 "--set=class_names=('background','organ')"
          --set label_map=0,1,1 --set loss.name=dice)
VNET_128=(--config=experiments/configs/vnet_synthetic.py --set model.features=16,32,64,128,256
          --set patch_size=128,128,128 --set global_batch_size=2)
for dt in float32 bfloat16; do
  for k in pallas xla; do
    step "train_unet3d_${dt}_$k" 60 "$STEPS/train_unet3d_${dt}_$k.json" \
      "$PY" -m benchmarks.bench_train "${UNET_128[@]}" --kernels "$k" --dtype "$dt" --steps 5 \
      --input_batches 2 --inference_volumes 0 $([ "$k" = xla ] && echo --torch) \
      --json "$STEPS/train_unet3d_${dt}_$k.json"
    step "train_vnet_${dt}_$k" 60 "$STEPS/train_vnet_${dt}_$k.json" \
      "$PY" -m benchmarks.bench_train "${VNET_128[@]}" --kernels "$k" --dtype "$dt" --steps 5 \
      --input_batches 2 --inference_volumes 0 --json "$STEPS/train_vnet_${dt}_$k.json"
  done
done

# One results file: every step's command, status, seconds, output tail and JSON.
"$PY" - "$STEPS" "$OUT_FILE" "$DRY" <<'PYEOF'
import datetime, json, os, pathlib, subprocess, sys
steps_dir, out, dry = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "commit": commit, "dry_run": dry, "steps": {}}
for name in (steps_dir / "order").read_text().split():
  cmd = steps_dir / f"{name}.cmd"
  rc = (steps_dir / f"{name}.rc").read_text().strip()
  jpath = (steps_dir / f"{name}.jsonpath").read_text().strip()
  data = None
  if jpath != "-" and os.path.exists(jpath):
    data = json.loads(pathlib.Path(jpath).read_text())
  log = (steps_dir / f"{name}.log").read_text(errors="replace").splitlines()
  result["steps"][name] = {"command": cmd.read_text().strip(),
                           "status": rc if rc in ("dry-run", "skipped") else int(rc),
                           "seconds": int((steps_dir / f"{name}.s").read_text()),
                           "output_tail": log[-40:], "json": data}
tmp = out + ".tmp"
pathlib.Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
os.replace(tmp, out)
failed = [n for n, s in result["steps"].items() if s["status"] not in (0, "dry-run", "skipped")]
print(f"results: {out}; {len(result['steps'])} steps"
      + (f"; failed: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
PYEOF
