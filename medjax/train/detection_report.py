"""The files a detection evaluation leaves in the workdir besides `eval.json`.

* `eval.csv`: one row per test scan (`detection_scores.case_row`);
* `report/froc.png`: the LUNA16 FROC curve (log FP/scan axis), its seven points
  with their bootstrap 95% CIs, and the CPM;
* `report/boxes_<case>.png`: the axial slice through the centre of each true
  lesion (or of the best detection) with the true boxes solid and the
  detections dashed, each labelled with its score (those above the operating
  threshold in one colour, the other candidates fainter).
"""
from __future__ import annotations

import csv
import dataclasses
import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # pylint: disable=wrong-import-position
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from medjax.detection import boxes as box_ops  # pylint: disable=wrong-import-position
from medjax.detection.froc import FrocResult  # pylint: disable=wrong-import-position
from medjax.train.workdir import Workdir  # pylint: disable=wrong-import-position

SLICES_PER_CASE = 3
DETECTIONS_DRAWN = 8


@dataclasses.dataclass
class BoxExample:
  """One scan kept for drawing: raw image `(D, H, W)`, true boxes `(M, 6)`, detections
  `(K, 6)` with their scores, and the operating threshold."""
  case: str
  image: np.ndarray
  gt_boxes: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  threshold: float


def write_eval_csv(workdir: Workdir, results: dict) -> str:
  """`eval.csv`: the `per_case` rows of `results`."""
  rows = results.get("per_case", [])
  columns = list(rows[0]) if rows else ["case"]
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return workdir.write_eval_csv(out.getvalue())


def plot_froc(result: FrocResult, path: str, *, title: str = "") -> None:
  """The FROC curve with the LUNA16 points, their CIs and the CPM."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  fps = np.maximum(result.fps, 1e-3)
  ax.plot(fps, result.curve, lw=1.2, color="C0", label="FROC")
  rates = np.asarray(result.fp_rates)
  low, high = np.asarray(result.ci_low), np.asarray(result.ci_high)
  yerr = None
  if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
    yerr = np.vstack([result.sensitivity - low, high - result.sensitivity]).clip(0)
  ax.errorbar(rates, result.sensitivity, yerr=yerr, fmt="o", ms=4, color="C3", capsize=3,
              label=f"CPM {result.cpm:.3f}")
  ax.set(xscale="log", xlim=(rates[0] / 2, rates[-1] * 2), ylim=(0, 1.02),
         xlabel="false positives per scan", ylabel="sensitivity",
         title=title or f"FROC ({result.num_scans} scans, {result.num_nodules} nodules)")
  ax.set_xticks(rates, [f"{r:g}" for r in rates])
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_froc(workdir: Workdir, result: FrocResult, *, title: str = "") -> str:
  path = workdir.report_path("froc.png")
  plot_froc(result, path, title=title)
  return path


def _rectangle(box: np.ndarray, **style) -> mpatches.Rectangle:
  """The in-plane rectangle of a 3D box (pixel edges at index - 0.5)."""
  y1, x1, y2, x2 = box[1], box[2], box[4], box[5]
  return mpatches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, **style)


def focus_slices(example: BoxExample) -> list[int]:
  """Axial slices to draw: through the true lesions' centres, else through the best detection."""
  source = example.gt_boxes if len(example.gt_boxes) else example.boxes[:1]
  centers = box_ops.box_centers(np.asarray(source, np.float64)) if len(source) else np.zeros((0, 3))
  slices = sorted({int(np.clip(round(c[0]), 0, example.image.shape[0] - 1)) for c in centers})
  return slices[:SLICES_PER_CASE] or [example.image.shape[0] // 2]


def plot_boxes(example: BoxExample, path: str) -> None:
  """One panel per focus slice: truth solid (green), detections dashed with their score."""
  slices = focus_slices(example)
  fig, axes = plt.subplots(1, len(slices), figsize=(4.2 * len(slices), 4.4), squeeze=False)
  for ax, z in zip(axes[0], slices):
    ax.imshow(np.clip(example.image[z], -1000, 400), cmap="gray")
    for box in example.gt_boxes:
      if box[0] <= z < box[3]:
        ax.add_patch(_rectangle(box, edgecolor="lime", linewidth=1.4, linestyle="solid"))
    drawn = 0
    for box, score in zip(example.boxes, example.scores):
      if not box[0] - 0.5 <= z < box[3] + 0.5 or drawn >= DETECTIONS_DRAWN:
        continue
      finding = score >= example.threshold
      colour = "red" if finding else "orange"
      ax.add_patch(_rectangle(box, edgecolor=colour, linewidth=1.2, linestyle="dashed",
                              alpha=1.0 if finding else 0.6))
      ax.text(box[2] - 0.5, box[1] - 1.5, f"{score:.2f}", color=colour, fontsize=7)
      drawn += 1
    ax.set_title(f"{example.case}, slice {z}", fontsize=9)
    ax.axis("off")
  fig.suptitle("truth (solid green) / detections (dashed; red: score >= "
               f"{example.threshold:.2f})", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_box_slices(workdir: Workdir, examples: Sequence[BoxExample]) -> list[str]:
  """`report/boxes_<case>.png` of every kept example."""
  paths = []
  for example in examples:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in example.case)
    path = workdir.report_path(f"boxes_{safe}.png")
    plot_boxes(example, path)
    paths.append(path)
  return paths
