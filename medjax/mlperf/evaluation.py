"""The quality metric of the MLPerf 3D U-Net: mean Dice of kidney and tumour over the 42 cases.

mlcommons/training `retired_benchmarks/unet3d/pytorch/runtime/inference.py`
(`evaluate`, `sliding_window_inference`, `pad_input`, `gaussian_kernel`) and
`model/losses.py` (`DiceScore`), per validation case:

1. crop: along each axis, the remainder `size % stride` (stride = window x
   (1 - overlap) = 64) is cut off, split low/high, when it is below half a
   stride — from the image and the label alike (the Dice is computed on the
   cropped case);
2. pad the image with -2.2 (`padding_val`, below the normalised air value)
   to a multiple of the stride, and to at least the window, split low/high;
3. windows of 128^3 at every multiple of the stride; the logits of the
   overlapping windows are averaged with the weights `gaussian_kernel`
   (`medjax.inference.windows.importance_weights(mode="gaussian_cbrt")`);
4. the argmax, cropped back to the cropped case, one-hot;
5. per foreground class c (1 kidney, 2 tumour):
   `(2 |P_c ∩ T_c| + 1e-6) / (|P_c| + |T_c| + 1e-6)` (a class absent from
   both scores 1).

The score is the mean over the cases of each class's Dice (each case 1/42),
and `mean_dice` the mean of the two (`eval_metrics["mean_dice"]`). Cases are
shared over processes (`process_index::process_count`) and gathered.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from medjax.inference import windows

PAD_VALUE = -2.2  # runtime/inference.py: padding_val
SMOOTH = 1e-6  # model/losses.py Dice: smooth_nr = smooth_dr = 1e-6
CLASSES = (1, 2)  # kidney ("L1 dice"), tumour ("L2 dice")


def crop_and_pad(image: np.ndarray, label: np.ndarray, roi: Sequence[int], overlap: float
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
  """Steps 1-2: `(padded image (*P, C), cropped label (*S'), low padding per axis)`.

  `image` `(*S, C)`, `label` `(*S)`.
  """
  strides = [int(r * (1 - overlap)) for r in roi]
  size = label.shape
  bounds = [s % st for s, st in zip(size, strides)]
  bounds = [b if b < st // 2 else 0 for b, st in zip(bounds, strides)]
  crop = tuple(slice(b // 2, s - (b - b // 2)) for b, s in zip(bounds, size))
  image, label = image[crop], label[crop]
  pad = [(st - s % st) % st for s, st in zip(label.shape, strides)]
  pad = [p if s + p >= r else p + st for p, s, r, st in zip(pad, label.shape, roi, strides)]
  widths = [(p // 2, p - p // 2) for p in pad] + [(0, 0)]
  return (np.pad(image, widths, constant_values=PAD_VALUE), label,
          tuple(p // 2 for p in pad))


def dice_scores(prediction: np.ndarray, label: np.ndarray,
                classes: Sequence[int] = CLASSES) -> np.ndarray:
  """Step 5: `DiceScore` per class of integer maps, float64 `(len(classes),)`."""
  out = []
  for c in classes:
    p, t = prediction == c, label == c
    out.append((2.0 * np.logical_and(p, t).sum() + SMOOTH) / (t.sum() + p.sum() + SMOOTH))
  return np.asarray(out, np.float64)


def case_scores(logits_fn: Callable[[np.ndarray], Any], image: np.ndarray, label: np.ndarray,
                *, roi: Sequence[int], overlap: float = 0.5, batch_size: int = 1) -> np.ndarray:
  """The kidney and tumour Dice of one case (steps 1-5); `logits_fn` maps windows
  `(B, *roi, C)` to logits `(B, *roi, K)`."""
  padded, label, low = crop_and_pad(np.asarray(image, np.float32), np.asarray(label), roi,
                                    overlap)
  predicted = windows.sliding_window(logits_fn, padded[None], roi, overlap=overlap,
                                     mode="gaussian_cbrt", batch_size=batch_size,
                                     output="labels")[0]
  predicted = predicted[tuple(slice(lo, lo + n) for lo, n in zip(low, label.shape))]
  return dice_scores(predicted, label)


def evaluate(logits_fn: Callable[[np.ndarray], Any], source: Sequence[dict], *,
             roi: Sequence[int], overlap: float = 0.5, batch_size: int = 1,
             process_index: int = 0, process_count: int = 1) -> dict[str, Any]:
  """The metric over the cases of `source` (`image (*S)` or `(*S, C)`, `label (*S)`).

  Returns:
    `{"mean_dice", "kidney_dice", "tumour_dice", "per_case": [{"case", "kidney_dice",
    "tumour_dice"}]}`, each case weighted 1 / len(source).
  """
  n = len(source)
  scores = np.zeros((n, len(CLASSES)), np.float64)
  names = []
  for index in range(n):
    example = source[index]
    name = example.get("case", f"case_{index}")
    names.append(name.decode() if isinstance(name, bytes) else str(name))
    if index % process_count != process_index:
      continue
    image = np.asarray(example["image"], np.float32)
    label = np.asarray(example["label"])
    if image.ndim == label.ndim:
      image = image[..., None]
    scores[index] = case_scores(logits_fn, image, label, roi=roi, overlap=overlap,
                                batch_size=batch_size)
  if process_count > 1:  # every case was scored by exactly one process: the sum gathers them
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    scores = np.asarray(multihost_utils.process_allgather(scores)).sum(0)
  kidney, tumour = scores.mean(0) if n else (0.0, 0.0)
  return {"mean_dice": float((kidney + tumour) / 2), "kidney_dice": float(kidney),
          "tumour_dice": float(tumour),
          "per_case": [{"case": c, "kidney_dice": float(k), "tumour_dice": float(t)}
                       for c, (k, t) in zip(names, scores)]}


def logits_function(model, variables: dict) -> Callable[[np.ndarray], jax.Array]:
  """`windows -> logits` of a trained model in inference mode, jitted, on the first local
  device (the reference averages logits, not probabilities)."""
  variables = jax.device_put(variables, jax.local_devices()[0])
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return lambda x: apply(variables, x)


__all__ = ["crop_and_pad", "dice_scores", "case_scores", "evaluate", "logits_function",
           "PAD_VALUE"]
