"""PNG reports drawn from what evaluation returned: learning curves, and slices
with ground truth and prediction outlined. Nothing here scores anything."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from medjax.train.writer import read_metrics  # pylint: disable=wrong-import-position


def plot_learning_curves(rows: Sequence[dict], path: str) -> None:
  """Loss (log scale) and learning rate against the step."""
  steps = [r["step"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  loss = [r.get("loss") for r in rows]
  axes[0].plot(steps, [np.nan if v is None else v for v in loss], lw=1)
  axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
  axes[0].grid(alpha=0.3)
  axes[1].plot(steps, [r.get("learning_rate", np.nan) for r in rows], lw=1, color="C1")
  axes[1].set(xlabel="step", ylabel="learning rate", title="schedule")
  axes[1].grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def focus_slice(label: np.ndarray, class_id: int) -> int:
  """Index along axis 0 with the most voxels of `class_id` (the middle slice if none)."""
  counts = (label == class_id).reshape(label.shape[0], -1).sum(axis=1)
  return int(np.argmax(counts)) if counts.max() > 0 else label.shape[0] // 2


def plot_case(image: np.ndarray, label: np.ndarray, pred: np.ndarray, path: str, *,
              title: str, class_names: Sequence[str], focus_class: int) -> None:
  """One axial slice through `focus_class`: the image with ground truth (solid)
  and prediction (dashed) contours of every foreground class. A 2D case
  `(H, W)` is shown whole."""
  flat = image.ndim == 2
  if flat:
    image, label, pred = image[None], label[None], pred[None]
  z = focus_slice(label, focus_class)
  fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
  img = image[z]
  lo, hi = np.percentile(img, [1, 99])
  colours = ["C1", "C3", "C2", "C4", "C5"]
  for ax, (name, maps) in zip(axes, [("image", ()), ("ground truth", (label,)),
                                     ("truth (solid) / prediction (dashed)", (label, pred))]):
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    for style, m in zip(("solid", "dashed"), maps):
      for c in range(1, len(class_names)):
        if (m[z] == c).any():
          ax.contour(m[z] == c, levels=[0.5], colors=colours[(c - 1) % len(colours)],
                     linestyles=style, linewidths=1.2)
    ax.set_title(name, fontsize=9)
    ax.axis("off")
  handles = [plt.Line2D([], [], color=colours[(c - 1) % len(colours)], label=class_names[c])
             for c in range(1, len(class_names))]
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9)
  fig.suptitle(title if flat else f"{title} (slice {z})", fontsize=10)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_examples(workdir, examples: Sequence, *, class_names: Sequence[str],
                  title: str = "case") -> list[str]:
  """`report/case_<i>_<id>.png` for each `evaluate.Example`, through the innermost
  structure (the last class, e.g. the tumour); returns the paths."""
  paths = []
  for i, example in enumerate(examples):
    dice = ", ".join(f"{k} {v:.3f}" for k, v in example.scores.items() if k.startswith("dice/"))
    path = workdir.report_path(f"case_{i}_{example.case}.png")
    plot_case(example.image, example.label, example.pred, path,
              title=f"{title} {example.case}: {dice}", class_names=class_names,
              focus_class=len(class_names) - 1)
    paths.append(path)
  return paths


def write_learning_curves(workdir) -> None:
  """`report/learning_curves.png` from the workdir's `metrics.jsonl` (if any rows)."""
  rows = read_metrics(workdir)
  if rows:
    plot_learning_curves(rows, workdir.report_path("learning_curves.png"))


def plot_reliability(reliability: dict, path: str, *, title: str = "") -> None:
  """Reliability diagram (Guo 2017): accuracy against mean confidence per
  confidence bin (the diagonal is perfect calibration) and the number of
  samples per bin (log scale), before and, if given, after temperature scaling.

  Args:
    reliability: `{"before": bins[, "after": bins with "temperature"]}`, bins
      as `medjax.calibration.CalibrationHistogram.reliability` (`edges`,
      `count`, `confidence`, `accuracy`, `ece`).
  """
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  edges = np.asarray(reliability["before"]["edges"])
  width = np.diff(edges)
  axes[0].plot([0, 1], [0, 1], color="gray", lw=1, ls=":", label="perfect calibration")
  for i, (key, colour) in enumerate((("before", "C0"), ("after", "C3"))):
    bins = reliability.get(key)
    if not bins:
      continue
    label = (f"T = {bins['temperature']:.2f}: ECE {bins['ece']:.4f}" if key == "after"
             else f"uncalibrated: ECE {bins['ece']:.4f}")
    acc = np.array([np.nan if v is None else v for v in bins["accuracy"]], float)
    conf = np.array([np.nan if v is None else v for v in bins["confidence"]], float)
    axes[0].bar(edges[:-1] + i * width / 2, np.nan_to_num(acc), width=width / 2, align="edge",
                color=colour, alpha=0.6, label=label)
    axes[0].plot(conf, acc, "o", color=colour, ms=3)
    axes[1].bar(edges[:-1] + i * width / 2, np.asarray(bins["count"]), width=width / 2,
                align="edge", color=colour, alpha=0.6, label=key)
  axes[0].set(xlabel="confidence (bin; dots: mean confidence)", ylabel="accuracy", xlim=(0, 1),
              ylim=(0, 1), title="reliability")
  axes[0].legend(fontsize=8, loc="upper left")
  axes[1].set(xlabel="confidence", ylabel="samples", yscale="log", xlim=(0, 1),
              title="samples per bin")
  axes[0].grid(alpha=0.3)
  axes[1].grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_reliability(workdir, reliability, *, title: str = ""):
  """`report/reliability.png` from an evaluation's reliability data; None (and
  nothing drawn) when the evaluation scored no calibration."""
  if not reliability:
    return None
  path = workdir.report_path("reliability.png")
  plot_reliability(reliability, path, title=title)
  return path


# metrics drawn as box plots (one PNG each), when the evaluation has them: overlap, boundary
# (symmetric and the false-positive direction, which post-processing acts on) and volume; the
# others (iou, hd, ...) follow from these or are in eval.csv (~0.2 s per PNG on a loaded CPU)
BOX_METRICS = ("dice", "hd95", "asd", "nsd", "volume_diff_rel", "hd95_pred_to_truth")
# fewer cases make no box (quartiles of two values): nothing is drawn
MIN_BOX_CASES = 3


def plot_metric_boxes(per_case: Sequence[dict], metric: str, class_names: Sequence[str],
                      path: str) -> bool:
  """Box plot of one metric over the cases, one box per foreground class (and,
  where the cases carry `raw` scores, the raw prediction's box beside the
  post-processed one), with every case as a dot. Non-finite values (None)
  are left out and counted in the tick label. Returns False (nothing drawn)
  when no case has the metric."""
  groups, labels = [], []
  has_raw = bool(per_case[0].get("raw"))
  for name in class_names[1:]:
    key = f"{metric}/{name}"
    if key not in per_case[0]:
      continue
    scored = [c.get(key) for c in per_case]
    for kind, values in ([("raw", [c["raw"].get(key) for c in per_case]),
                          ("post-processed", scored)] if has_raw else [("", scored)]):
      finite = [v for v in values if v is not None and np.isfinite(v)]
      missing = len(values) - len(finite)
      labels.append(f"{name}\n{kind}" + (f"\n({missing} not finite)" if missing else ""))
      groups.append(finite)
  if not groups:
    return False
  fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(groups), 3.6))
  ax.boxplot([g if g else [np.nan] for g in groups], showfliers=False)
  rng = np.random.default_rng(0)
  for i, g in enumerate(groups, start=1):
    ax.plot(i + rng.uniform(-0.12, 0.12, len(g)), g, "o", ms=3, alpha=0.6, color="C0")
  ax.set_xticks(range(1, len(groups) + 1), labels, fontsize=8)
  ax.set(ylabel=metric, title=f"{metric} over {len(per_case)} cases")
  ax.grid(alpha=0.3, axis="y")
  fig.subplots_adjust(left=0.8 / fig.get_figwidth(), right=0.97, bottom=0.22, top=0.9)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return True


def write_metric_boxes(workdir, per_case: Sequence[dict], class_names: Sequence[str],
                       metrics: Sequence[str] = BOX_METRICS) -> list[str]:
  """`report/box_<metric>.png` for each metric the per-case results have (none
  for fewer than `MIN_BOX_CASES` cases); returns the paths."""
  paths = []
  if len(per_case) < MIN_BOX_CASES:
    return paths
  for metric in metrics:
    path = workdir.report_path(f"box_{metric}.png")
    if plot_metric_boxes(per_case, metric, class_names, path):
      paths.append(path)
  return paths
