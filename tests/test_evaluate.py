"""Scoring: per-class segmentation scores, case-level detection from the segmentation,
classification in the source's order with real case ids; post-processing decided on
validation and applied to the test cases; eval.csv, summary statistics, box plots."""
import csv
import json
import math
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import common
from medjax import postprocess
from medjax.data.pipeline import transforms
from medjax.train import evaluate, report
from medjax.train.tasks import SegmentationTask, segmentation
from medjax.train.workdir import Workdir


def _evaluate(config, model, variables, source):
  return SegmentationTask().evaluate(config, model, variables, source).results


class BrightIsTumour(nn.Module):
  """Logits (0, 0, 4 * x): the brighter a pixel, the more 'tumour' (a fixed, parameter-free model)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    zeros = jnp.zeros_like(x)
    return jnp.concatenate([zeros, zeros, 4.0 * x], axis=-1)


def _case(name, bright_spot: bool, tumour: bool, seed: int):
  rng = np.random.default_rng(seed)
  image = rng.normal(0.0, 10.0, (16, 16)).astype(np.float32)
  label = np.zeros((16, 16), np.uint8)
  if bright_spot:
    image[6:9, 6:9] += 200.0
  if tumour:
    label[6:9, 6:9] = 2
  return {"case": name, "image": image, "label": label, "spacing": np.ones(2, np.float32)}


def _config():
  c = common.base_config()
  c.patch_size = (16, 16)
  c.eval.surface_metrics = False
  c.eval.report_cases = 0
  c.eval.postprocess = False  # these hand-made cases have no validation split
  return c


def test_detection_auc_from_segmentation_max_probability():
  model, variables = BrightIsTumour(), {}
  # Tumour cases have the bright spot: the max tumour probability separates them perfectly.
  source = [_case(f"c{i}", bright_spot=i < 3, tumour=i < 3, seed=i) for i in range(6)]
  out = _evaluate(_config(), model, variables, source)
  assert out["detection_auc/tumour"] == pytest.approx(1.0)
  assert "detection_auc/organ" not in out  # no case has an organ: AUC undefined, left out
  probs = [c["max_prob/tumour"] for c in out["per_case"]]
  assert min(probs[:3]) > max(probs[3:])
  assert "max_prob/tumour" not in out  # per case only, not averaged
  # Bright spots in the tumour-free cases instead: the detector is always wrong.
  swapped = [_case(f"c{i}", bright_spot=i >= 3, tumour=i < 3, seed=i) for i in range(6)]
  assert _evaluate(_config(), model, variables, swapped)[
      "detection_auc/tumour"] == pytest.approx(0.0)
  # Every case has a tumour: no detection AUC.
  all_present = [_case(f"c{i}", bright_spot=True, tumour=True, seed=i) for i in range(3)]
  assert "detection_auc/tumour" not in _evaluate(_config(), model, variables, all_present)


def test_scoring_keeps_examples_for_the_report_and_draws_nothing(tmp_path):
  config = _config()
  config.eval.report_cases = 2
  source = [_case(f"c{i}", bright_spot=True, tumour=True, seed=i) for i in range(3)]
  evaluation = SegmentationTask().evaluate(config, BrightIsTumour(), {}, source)
  assert [e.case for e in evaluation.examples] == ["c0", "c1"]
  example = evaluation.examples[0]
  assert example.image.shape == example.label.shape == example.pred.shape == (16, 16)
  # the image as the network sees it (normalised), for the report's contrast
  np.testing.assert_allclose(example.image, transforms.normalize_ct(source[0]["image"]), rtol=1e-6)
  assert example.scores["dice/tumour"] == evaluation.results["per_case"][0]["dice/tumour"]
  assert not list(tmp_path.iterdir())


def test_classification_scores_in_source_order_with_case_ids():
  images = [(f"img{i}", np.full((4, 4, 1), float(i)), i % 2) for i in range(5)]
  # P(positive) = 0.1 + 0.05 * mean intensity: images 1 and 3 (label 1) score 0.15 and 0.25
  predict = lambda x: np.stack([1 - (0.1 + 0.05 * x.mean((1, 2, 3))),
                                0.1 + 0.05 * x.mean((1, 2, 3))], -1)
  out = evaluate.score_classification(predict, iter(images), ("neg", "pos"), batch_size=2).results
  assert [c["case"] for c in out["per_case"]] == ["img0", "img1", "img2", "img3", "img4"]
  assert [c["label"] for c in out["per_case"]] == [0, 1, 0, 1, 0]
  assert out["accuracy"] == pytest.approx(3 / 5)  # all predicted negative
  # scores 0.1, 0.15, 0.2, 0.25, 0.3 for labels 0,1,0,1,0: 3 of 6 pairs ranked right
  assert out["auc/pos"] == pytest.approx(3 / 6)
  assert out["per_case"][4]["prob"] == pytest.approx(0.3)


class VeryBrightIsTumour(nn.Module):
  """Logits (0, 0, 4 (x - 2)): tumour where the normalised intensity is above 2 (no noise pixel)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    zeros = jnp.zeros_like(x)
    return jnp.concatenate([zeros, zeros, 4.0 * (x - 2.0)], axis=-1)


def _islands_case(name, seed):
  """A 3x3 tumour (bright, labelled) and a 1-pixel bright island outside the label."""
  case = _case(name, bright_spot=True, tumour=True, seed=seed)
  case["image"][13, 13] += 200.0
  case["spacing"] = np.array([0.5, 2.0], np.float32)
  return case


def test_postprocessing_decided_on_validation_applied_and_stored(tmp_path, monkeypatch):
  validation = [_islands_case(f"val{i}", seed=10 + i) for i in range(2)]
  monkeypatch.setattr(segmentation, "load_split", lambda config, split: validation)
  config = _config()
  config.eval.postprocess = True
  config.eval.surface_metrics = True
  config.eval.report_cases = 1
  test = [_islands_case("t0", seed=0), _case("t1", bright_spot=True, tumour=True, seed=1),
          _case("t2", bright_spot=True, tumour=True, seed=2)]
  task = SegmentationTask()
  evaluation = task.evaluate(config, VeryBrightIsTumour(), {}, test)
  out = evaluation.results
  # validation: the island costs tumour Dice 18/19; the foreground-union rule (tried first)
  # removes it (organ: both empty, 1.0 before and after) and is kept
  pp = out["postprocessing"]
  assert pp["applied"] and pp["rules"] == [{"kind": "largest_component", "classes": [1, 2]}]
  assert pp["validation_dice_raw"] == {"1": 1.0, "2": pytest.approx(18 / 19)}
  assert pp["validation_dice_final"] == {"1": 1.0, "2": 1.0}
  # the test numbers under the usual keys are post-processed, the raw ones beside them
  assert [c["dice/tumour"] for c in out["per_case"]] == [1.0, 1.0, 1.0]
  assert [c["raw"]["dice/tumour"] for c in out["per_case"]] == [pytest.approx(18 / 19), 1.0, 1.0]
  assert pp["raw"]["dice/tumour"] == pytest.approx((18 / 19 + 2) / 3)
  assert out["dice/tumour"] == 1.0 and out["hd95/tumour"] == 0.0
  # island (13, 13) to the tumour's nearest surface voxel (8, 8): 5 rows x 0.5 mm, 5 columns x 2 mm
  assert out["per_case"][0]["raw"]["hd/tumour"] == pytest.approx(math.hypot(2.5, 10.0))
  assert out["per_case"][0]["raw"]["hd95_truth_to_pred/tumour"] == 0.0
  assert out["per_case"][0]["raw"]["volume_diff_ml/tumour"] == pytest.approx(1e-3)
  assert out["missing_structures"]["organ"] == {"prediction": 3, "truth": 3, "missed": 0,
                                                "spurious": 0}
  assert out["missing_structures"]["tumour"] == {"prediction": 0, "truth": 0, "missed": 0,
                                                 "spurious": 0}
  assert list(out)[-1] == "per_case"
  workdir = Workdir(str(tmp_path)).create()
  task.write_outputs(config, evaluation, workdir)
  assert Workdir.of(workdir).read_postprocessing_rules() == (postprocess.Rule("largest_component", (1, 2)),)
  with open(workdir.postprocessing_path) as f:
    stored = json.load(f)
  # tried: the union, each class's largest component, each class's min_volume thresholds
  assert stored["validation"]["cases"] == 2
  assert len(stored["validation"]["tried"]) == 1 + 2 + 2 * len(postprocess.MIN_VOLUMES_ML)
  # eval.csv: one row per case and foreground class, the same numbers as per_case
  with open(workdir.eval_csv_path) as f:
    rows = list(csv.DictReader(f))
  assert [(r["case"], r["class"]) for r in rows] == [
      (c, k) for c in ("t0", "t1", "t2") for k in ("organ", "tumour")]
  for row in rows:
    case = next(c for c in out["per_case"] if c["case"] == row["case"])
    for column, value in row.items():
      if column in ("case", "class"):
        continue
      key = f"{column[4:] if column.startswith('raw_') else column}/{row['class']}"
      expected = case["raw"][key] if column.startswith("raw_") else case[key]
      assert (value == "" and expected is None) or float(value) == expected, (column, row)
  assert {"dice", "hd95", "volume_diff_rel", "hd95_pred_to_truth", "max_prob",
          "raw_dice", "raw_hd95"} <= set(rows[0])
  boxes = sorted(n for n in os.listdir(tmp_path / "report") if n.startswith("box_"))
  assert boxes == sorted(f"box_{m}.png" for m in report.BOX_METRICS)
  assert report.write_metric_boxes(workdir, out["per_case"][:2], config.class_names) == []
  assert (tmp_path / "report" / "case_0_t0.png").exists()


def test_no_rule_kept_leaves_the_raw_numbers(monkeypatch):
  validation = [_case(f"val{i}", bright_spot=True, tumour=True, seed=10 + i) for i in range(2)]
  monkeypatch.setattr(segmentation, "load_split", lambda config, split: validation)
  config = _config()
  config.eval.postprocess = True
  test = [_islands_case("t0", seed=0)]
  evaluation = SegmentationTask().evaluate(config, VeryBrightIsTumour(), {}, test)
  out = evaluation.results
  assert not out["postprocessing"]["applied"] and out["postprocessing"]["rules"] == []
  assert "raw" not in out["postprocessing"] and "raw" not in out["per_case"][0]
  assert out["dice/tumour"] == pytest.approx(18 / 19)  # the island is kept
  assert evaluation.postprocessing["rules"] == []


def test_statistics_by_hand():
  per_case = [{"case": "a", "dice/x": 0.5, "hd95/x": 2.0},
              {"case": "b", "dice/x": 0.7, "hd95/x": None},
              {"case": "c", "dice/x": 0.9, "hd95/x": 6.0},
              {"case": "d", "dice/x": 1.0, "hd95/x": float("inf")}]
  st = evaluate.statistics(per_case)
  assert st["dice/x"]["mean"] == pytest.approx(0.775)
  # sample std: deviations -0.275, -0.075, 0.125, 0.225 -> sum of squares 0.1475 / 3
  assert st["dice/x"]["std"] == pytest.approx(math.sqrt(0.1475 / 3))
  assert st["dice/x"]["median"] == pytest.approx(0.8)
  assert st["dice/x"]["n"] == 4 and st["dice/x"]["nonfinite"] == 0
  assert st["hd95/x"] == {"mean": 4.0, "std": pytest.approx(math.sqrt(8.0)), "median": 4.0,
                          "n": 2, "nonfinite": 2}
  assert evaluate.statistics(per_case[1:2])["hd95/x"]["mean"] is None
  assert evaluate.statistics(per_case[:1])["dice/x"]["std"] == 0.0
  assert evaluate.missing_structures(
      [{"x": True}, {"x": True}, {"x": False}, {"x": False}],
      [{"x": True}, {"x": False}, {"x": True}, {"x": False}]) == {
          "x": {"prediction": 2, "truth": 2, "missed": 1, "spurious": 1}}
