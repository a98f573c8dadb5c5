"""The tables of `benchmarks/RESULTS.md` from a compile check's JSON.

    python -m benchmarks.compile_check.markdown /tmp/check.json

prints, from `python -m benchmarks.compile_check --json FILE` (and `--full`):
a summary per kernel name and dtype (count, ranges of registers, shared memory,
CTAs per SM, MMA instructions), one row per conv3d layer and dtype with its forward,
input-gradient and weight-gradient kernels (grid · warps/stages · registers · shared
memory KiB · CTAs per SM · MMA), one row per soft-Dice case, and with `--full` the static
roofline (floor, Pallas and XLA bytes with their multiple of the floor, lower-bound
times, the Pallas program's kernels).
"""
from __future__ import annotations

import collections
import json
import sys
from typing import Any

CONV_KERNELS = ("medjax_conv3d", "medjax_conv3d_dx", "medjax_conv3d_dw")
SOFT_DICE_KERNELS = ("soft_dice_stats_fwd", "soft_dice_stats_bwd")


def kernel_cell(row: dict[str, Any]) -> str:
  """`grid · warps/stages · registers · shared memory KiB · CTAs per SM · MMA`."""
  g = row["grid"]
  grid = "×".join(str(n) for n in g if n > 1) or "1"
  return (f"{grid} · {row['num_warps']}/{row['num_stages']} · {row['regs']} · "
          f"{round(row['smem'] / 1024)} · {row['ctas_per_sm']} · {row['mma']}")


def summary_table(rows: list[dict[str, Any]]) -> str:
  """One line per (kernel name, dtype) over every instance."""
  groups: dict[tuple[str, str], list] = collections.defaultdict(list)
  for r in rows:
    if "error" not in r:
      groups[(r["kernel"], r["dtype"])].append(r)
  lines = ["| kernel | dtype | count | registers | shared memory (B) | CTAs/SM | MMA |",
           "|---|---|---|---|---|---|---|"]
  order = lambda kv: (kv[0][0], kv[0][1] != "float32")
  for (kernel, dtype), rs in sorted(groups.items(), key=order):
    span = lambda key, fmt="{}", rs=rs: (f"{fmt.format(min(r[key] for r in rs))}-"
                                         f"{fmt.format(max(r[key] for r in rs))}")
    mma = ", ".join(f"{m} ({sum(r['mma'] == m for r in rs)})"
                    for m in sorted({r["mma"] for r in rs}))
    lines.append(f"| {kernel} | {dtype} | {len(rs)} | {span('regs')} | {span('smem', '{:,}')} | "
                 f"{span('ctas_per_sm')} | {mma} |")
  return "\n".join(lines)


def _per_case(rows, prefix: str, kernels: tuple[str, ...], header: str) -> str:
  cases: dict[str, dict[str, Any]] = {}
  for r in rows:
    if r["case"].startswith(prefix) and "error" not in r:
      cases.setdefault(r["case"], {})[r["kernel"]] = r
  lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
  for tag, by_kernel in cases.items():
    _, name, variant = tag.split("/")
    variant = variant.split("=")[-1]  # soft Dice: "squared=False" -> "False"
    cells = [kernel_cell(by_kernel[k]) if k in by_kernel else "—" for k in kernels]
    lines.append(f"| {name} | {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def conv_table(rows: list[dict[str, Any]]) -> str:
  return _per_case(rows, "conv3d/", CONV_KERNELS, "| conv3d layer | dtype | forward | "
                   "input gradient (dx) | weight gradient (dw) |")


def soft_dice_table(rows: list[dict[str, Any]]) -> str:
  return _per_case(rows, "soft_dice/", SOFT_DICE_KERNELS,
                   "| soft-Dice shape | squared | forward | backward |")


def roofline_table(whole: list[dict[str, Any]]) -> str:
  """The `--full` rows: bytes against the floor, lower bounds, the Pallas kernels."""
  lines = ["| case | dtype | floor MB | Pallas MB (x floor) | XLA MB (x floor) | "
           "lower bound ms Pallas / XLA | Pallas kernels |",
           "|---|---|---|---|---|---|---|"]
  for r in whole:
    if "error" in r:
      lines.append(f"| {r['case']} | {r['dtype']} | — | error: {r['error'][:80]} | | | |")
      continue
    p, x = r["pallas"], r["xla"]
    kinds = p["kernels"]
    count = lambda test: sum(n for k, n in kinds.items() if test(k))
    kernels = (f"{count(lambda k: 'triton' in k)} Triton + "
               f"{count(lambda k: k.startswith('fusion'))} fusions + "
               f"{count(lambda k: 'cudnn' in k)} cuDNN")
    lines.append(f"| {r['case'].split('/')[1]} | {r['dtype']} | {r['floor_bytes'] / 1e6:,.0f} | "
                 f"{p['bytes'] / 1e6:,.0f} ({p['x_floor']:.2f}x) | "
                 f"{x['bytes'] / 1e6:,.0f} ({x['x_floor']:.2f}x) | "
                 f"{p['lower_bound_ms']:.3f} / {x['lower_bound_ms']:.3f} | {kernels} |")
  return "\n".join(lines)


def tables(result: dict[str, Any]) -> str:
  """Every table the JSON of one check has, separated by blank lines."""
  parts = [summary_table(result["rows"])]
  for make in (conv_table, soft_dice_table):
    table = make(result["rows"])
    if table.count("\n") > 1:
      parts.append(table)
  if result.get("whole"):
    parts.append(roofline_table(result["whole"]))
  return "\n\n".join(parts)


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: python -m benchmarks.compile_check.markdown CHECK.json", file=sys.stderr)
    return 2
  try:
    with open(argv[1]) as f:
      result = json.load(f)
  except (OSError, ValueError) as e:
    print(f"error: {argv[1]}: {e}; expected the --json file of benchmarks.compile_check",
          file=sys.stderr)
    return 2
  print(tables(result))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
