"""The MLPerf 3D U-Net's training input (`medjax.data.pipeline.mlperf_sampler`): the
reference's balanced crop, augmentations and epochs (mlcommons/training
`retired_benchmarks/unet3d/pytorch/data_loading/pytorch_loader.py`, `data_loader.py`)."""
import numpy as np
import pytest

from medjax.data.pipeline import mlperf_sampler as ms
from medjax.errors import InputError


def _label():
  label = np.zeros((40, 48, 44), np.uint8)
  label[5:15, 10:30, 8:20] = 1      # a kidney, 10 x 20 x 12
  label[30:33, 40:44, 30:34] = 1    # a small second component
  label[36:38, 2:4, 2:4] = 1        # the smallest: not among the two largest
  label[8:11, 12:15, 10:13] = 2     # a tumour in the kidney
  return label


def test_foreground_boxes_keep_two_largest_per_class():
  boxes = ms.foreground_boxes(_label())
  rows = {tuple(r) for r in boxes.tolist()}
  assert rows == {(1, 30, 40, 30, 33, 44, 34), (1, 5, 10, 8, 15, 30, 20), (2, 8, 12, 10, 11, 15, 13)}


def test_foreground_crop_contains_the_object():
  label = _label()
  boxes = ms.foreground_boxes(label)
  patch = (16, 24, 16)
  for seed in range(50):
    window = ms.crop_window(np.random.default_rng(seed), label.shape, boxes, patch, 1.0)
    assert tuple(w.stop - w.start for w in window) == patch
    assert all(0 <= w.start and w.stop <= n for w, n in zip(window, label.shape))
    assert label[window].any()  # every object is smaller than the patch: it is inside
    inside = [all(w.start <= b[1 + a] and b[4 + a] <= w.stop for a, w in enumerate(window))
              for b in boxes]
    assert any(inside)


def test_uniform_crop_never_takes_the_last_start():
  shape, patch = (20, 20, 20), (18, 18, 18)
  starts = {tuple(w.start for w in ms.crop_window(np.random.default_rng(s), shape,
                                                  np.zeros((0, 7), np.int32), patch, 0.4))
            for s in range(200)}
  assert {a for st in starts for a in st} == {0, 1}  # randrange(2): 0 or 1, never 2


def test_flip_probability_and_alignment():
  label = _label()
  image = label.astype(np.float32)
  flips = 0
  for s in range(600):
    img, lab = ms.augment(np.random.default_rng(s), image, label)
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    flips += int(np.nonzero(lab == 2)[0].mean() > 20)  # the tumour moved: axis 0 flipped
    factor = img[lab == 1].mean()
    assert factor == pytest.approx(1.0, abs=0.05) or 1.65 < factor < 2.35
  assert abs(flips / 600 - 1 / 3) < 0.08


def test_epochs_visit_every_case_once_and_resume():
  cases = [{"image": np.full((4, 4, 4), i, np.float32), "label": np.full((4, 4, 4), i, np.uint8),
            "case": f"case_{i}"} for i in range(5)]  # the label names the case (unaugmented)
  kw = dict(patch_size=(4, 4, 4), global_batch_size=2, seed=3, num_steps=6)
  batches = list(ms.train_batches(cases, **kw))
  seen = [int(b["label"][j, 0, 0, 0]) for b in batches for j in range(2)]
  # 5 cases, batches of 2: epochs of 2 steps (4 samples), the fifth case left out
  for epoch in range(3):
    assert len(set(seen[4 * epoch:4 * epoch + 4])) == 4
  resumed = list(ms.train_batches(cases, start_step=3, **kw))
  for a, b in zip(batches[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert batches[0]["image"].shape == (2, 4, 4, 4, 1) and batches[0]["label"].dtype == np.uint8


def test_too_few_cases_for_a_batch():
  with pytest.raises(InputError, match="at least one full batch"):
    ms.steps_per_epoch(3, 4)
