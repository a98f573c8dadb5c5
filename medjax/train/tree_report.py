"""PNGs of a trained soft decision tree (Frosst & Hinton 2017, Fig. 2): the
inner-node filters laid out as the tree, and one example's path.

An inner node's filter is its weight vector `w_i` reshaped to the input patch:
the node routes an input right with probability `sigmoid(beta (w_i . x + b_i))`,
so bright filter pixels push right, dark ones left. Nothing here scores
anything; `medjax.train.tasks.distillation` computes what is drawn.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


@dataclasses.dataclass
class TreeDrawing:
  """What the tree PNGs show.

  Attributes:
    filters: `(2^d - 1, H, W)` inner-node weights reshaped to the patch
      (breadth-first: node i has children 2i+1 (left) and 2i+2 (right)).
    leaf_dist: `(2^d, K)` the leaves' class distributions `Q_l`.
    class_names: the K class names.
    case: the drawn example's id.
    image: `(H, W)` the example (normalised, as the tree saw it).
    label: its true class.
    split_probs: `(2^d - 1,)` its right-branch probability at every node.
  """
  filters: np.ndarray
  leaf_dist: np.ndarray
  class_names: Sequence[str]
  case: str
  image: np.ndarray
  label: int
  split_probs: np.ndarray

  @property
  def depth(self) -> int:
    return int(np.log2(self.leaf_dist.shape[0]))


def leaf_probabilities(split_probs: np.ndarray, depth: int) -> np.ndarray:
  """`(2^d,)` path probability `P_l` of every leaf from the right-branch
  probabilities `(2^d - 1,)` of the inner nodes (breadth-first numbering)."""
  probs = np.ones(1)
  for level in range(depth):
    p = np.asarray(split_probs[2 ** level - 1:2 ** (level + 1) - 1], np.float64)
    probs = np.stack([probs * (1 - p), probs * p], axis=-1).reshape(-1)
  return probs


def max_path(split_probs: np.ndarray, depth: int) -> list[int]:
  """The paper's max-path rule: the inner nodes from the root to the leaf with
  the largest path probability, then that leaf's index as the last element."""
  leaf = int(np.argmax(leaf_probabilities(split_probs, depth)))
  node, nodes = 2 ** depth - 1 + leaf, []
  while node > 0:
    node = (node - 1) // 2
    nodes.append(node)
  return nodes[::-1] + [leaf]


def _show_filter(ax, w: np.ndarray) -> None:
  """Signed filter on a symmetric colour scale (red: pushes right, blue: left)."""
  lim = float(np.abs(w).max()) or 1.0
  ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)
  ax.set_xticks([])
  ax.set_yticks([])


def _leaf_label(dist: np.ndarray, class_names: Sequence[str]) -> str:
  k = int(np.argmax(dist))
  return f"{class_names[k]}\n{dist[k]:.2f}"


def plot_filters(drawing: TreeDrawing, path: str) -> None:
  """Every inner node's filter at its place in the tree, the leaves' most
  probable class (and its probability) underneath."""
  d = drawing.depth
  width, height = max(6.0, 1.2 * 2 ** (d - 1)), 1.4 * d + 1.2
  fig = plt.figure(figsize=(width, height))
  top, bottom = 1 - 0.5 / height, 0.7 / height  # figure fractions: title above, leaves below
  row = (top - bottom) / d
  side = min(0.85 * width / 2 ** (d - 1), 0.75 * row * height)  # inches, square axes
  for level in range(d):
    for j in range(2 ** level):
      node = 2 ** level - 1 + j
      cx, cy = (j + 0.5) / 2 ** level, top - (level + 0.5) * row
      ax = fig.add_axes([cx - side / width / 2, cy - side / height / 2 - 0.1 / height,
                         side / width, side / height])
      _show_filter(ax, drawing.filters[node])
      ax.set_title(f"node {node}", fontsize=7, pad=2)
  for leaf in range(2 ** d):
    fig.text((leaf + 0.5) / 2 ** d, bottom / 2,
             _leaf_label(drawing.leaf_dist[leaf], drawing.class_names),
             ha="center", va="center", fontsize=6)
  fig.suptitle("soft decision tree: inner-node filters (red pushes right), leaf classes",
               fontsize=9)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_path(drawing: TreeDrawing, path: str) -> None:
  """One example, then the filter of every node on its max path with the
  probability of the branch taken, then the leaf's class distribution."""
  nodes = max_path(drawing.split_probs, drawing.depth)
  inner, leaf = nodes[:-1], nodes[-1]
  fig, axes = plt.subplots(1, len(inner) + 2, figsize=(1.9 * (len(inner) + 2), 2.6))
  lo, hi = np.percentile(drawing.image, [1, 99])
  axes[0].imshow(drawing.image, cmap="gray", vmin=lo, vmax=hi)
  axes[0].set_title(f"{drawing.case}\ntrue: {drawing.class_names[drawing.label]}", fontsize=8)
  axes[0].axis("off")
  for ax, node in zip(axes[1:], inner):
    _show_filter(ax, drawing.filters[node])
    p = float(drawing.split_probs[node])
    side, prob = ("right", p) if p > 0.5 else ("left", 1 - p)
    ax.set_title(f"node {node}: {side}\np = {prob:.2f}", fontsize=8)
  dist = drawing.leaf_dist[leaf]
  ax = axes[-1]
  ax.bar(range(len(dist)), dist, color="C0")
  ax.set_xticks(range(len(dist)))
  ax.set_xticklabels(drawing.class_names, fontsize=7, rotation=30)
  ax.set_ylim(0, 1)
  ax.set_title(f"leaf {leaf}: {drawing.class_names[int(np.argmax(dist))]}", fontsize=8)
  fig.suptitle("max path of one test example", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


__all__ = ["TreeDrawing", "leaf_probabilities", "max_path", "plot_filters", "plot_path"]
