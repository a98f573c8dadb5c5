"""Soft decision tree trained by distillation (Frosst & Hinton 2017): the
tree's probabilities, the distillation objective against hand-computed
values, a tiny teacher -> tree run end to end, and bad teacher workdirs."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import init_apply, normal

from experiments.configs import convnet_synthetic2d, soft_tree_patches
from medjax.errors import InputError
from medjax.models import SoftDecisionTree
from medjax.train import loop, tree_report
from medjax.train.tasks import distillation


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- the tree

def test_leaf_probabilities_sum_to_one_and_the_max_path_is_the_most_probable_leaf():
  model = SoftDecisionTree(depth=3, num_classes=3)
  x = 3.0 * normal((16, 6, 6, 1), 0)
  variables, (out, aux) = init_apply(model, x, return_aux=True)
  leaf = np.asarray(aux["leaf_probs"])
  assert leaf.shape == (16, 8)
  np.testing.assert_allclose(leaf.sum(-1), 1.0, rtol=1e-5)
  # the report recomputes P_l from the split probabilities alone
  split = np.asarray(aux["split_probs"])
  for i in range(16):
    np.testing.assert_allclose(tree_report.leaf_probabilities(split[i], 3), leaf[i],
                               rtol=1e-3, atol=1e-6)
    nodes = tree_report.max_path(split[i], 3)
    assert nodes[-1] == int(np.argmax(leaf[i])) and nodes[0] == 0 and len(nodes) == 4
  # max-path logits: the log-distribution of that leaf
  max_path = model.apply(variables, x, method=model.max_path_logits)
  log_q = np.asarray(aux["leaf_log_dist"])
  np.testing.assert_allclose(max_path, log_q[leaf.argmax(-1)], rtol=1e-6)


# ----------------------------------------------------------------------------- the objective

def _config(model="convnet", alpha=0.0, temperature=3.0, balance=0.0, soft_loss="mixture"):
  return ml_collections.ConfigDict({
      "model": {"name": model},
      "distill": {"teacher": "", "alpha": alpha, "temperature": temperature,
                  "balance": balance, "soft_loss": soft_loss}})


def _ce(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1))


def test_soft_target_loss_is_the_cross_entropy_to_the_softened_teacher():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(5, 3)).astype(np.float32)
  teacher = 4.0 * rng.normal(size=(5, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 1, 0], np.int32)
  objective = distillation.distillation_objective(_config(temperature=3.0), _ce)
  got = objective.loss(jnp.asarray(student), {"label": labels, "teacher_logits": teacher})
  soft = np.exp(_log_softmax(teacher / 3.0))
  expected = -(soft * _log_softmax(student)).sum(-1).mean()
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  assert objective.apply_kwargs == {}
  # alpha mixes the two: 0.25 hard + 0.75 soft
  hard = -_log_softmax(student)[np.arange(5), labels].mean()
  mixed = distillation.distillation_objective(_config(alpha=0.25, temperature=3.0), _ce)
  np.testing.assert_allclose(
      float(mixed.loss(jnp.asarray(student), {"label": labels, "teacher_logits": teacher})),
      0.25 * hard + 0.75 * expected, rtol=1e-5)


def test_alpha_one_is_the_hard_label_cross_entropy_and_needs_no_teacher():
  student = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)
  labels = np.array([1, 2], np.int32)
  objective = distillation.distillation_objective(_config(alpha=1.0), _ce)
  got = objective.loss(jnp.asarray(student), {"label": labels})  # no teacher_logits
  expected = -_log_softmax(student)[[0, 1], [1, 2]].mean()
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_tree_objective_adds_the_balance_regulariser_to_the_leaf_loss():
  model = SoftDecisionTree(depth=2, num_classes=3)
  x = normal((6, 4, 4, 1), 0)
  teacher = 2.0 * np.asarray(normal((6, 3), 1))
  _, (out, aux) = init_apply(model, x, return_aux=True)
  objective = distillation.distillation_objective(
      _config(model="soft_tree", balance=0.3, soft_loss="leaf", temperature=2.0), _ce)
  assert objective.apply_kwargs == {"return_aux": True}
  got = objective.loss((out, aux), {"label": np.zeros(6, np.int32), "teacher_logits": teacher})
  # by hand: sum_l P_l CE(T, Q_l) + sum_i 0.3 2^-d(i) (-1/2)(log a_i + log(1 - a_i))
  soft = np.exp(_log_softmax(teacher / 2.0))
  leaf_ce = -soft @ np.asarray(aux["leaf_log_dist"], np.float64).T
  leaf_loss = (np.asarray(aux["leaf_probs"]) * leaf_ce).sum(-1).mean()
  mu, p = np.asarray(aux["path_probs"], np.float64), np.asarray(aux["split_probs"], np.float64)
  a = (mu * p).sum(0) / mu.sum(0)
  weight = 0.3 * np.array([1.0, 0.5, 0.5])
  balance = -(weight * 0.5 * (np.log(a) + np.log1p(-a))).sum()
  np.testing.assert_allclose(float(got), leaf_loss + balance, rtol=1e-4)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  """A 1-step ConvNet teacher on the smoke patches, then a 2-step distilled tree."""
  root = tmp_path_factory.mktemp("distillation")
  teacher = convnet_synthetic2d.get_config("patches,smoke")
  teacher.data_dir = data_dir
  teacher.num_steps = 1
  loop.train(teacher, loop.prepare_workdir(teacher, str(root / "teacher")))  # not evaluated
  student = soft_tree_patches.get_config("smoke")
  student.data_dir = data_dir
  student.num_steps = 2
  student.model.depth = 2
  student.distill.teacher = str(root / "teacher")
  results = loop.train_and_evaluate(student, str(root / "tree"))
  return {"root": root, "data_dir": data_dir, "results": results, "student": student}


@pytest.mark.e2e
def test_distilled_tree_run_writes_eval_json_and_tree_pngs(runs):
  tree = runs["root"] / "tree"
  saved = json.loads((tree / "eval.json").read_text())
  n = len(saved["per_case"])
  assert n == 6
  for key in ("accuracy", "max_path_accuracy", "teacher/accuracy", "teacher_agreement"):
    assert 0.0 <= saved[key] <= 1.0, key
    assert round(saved[key] * n) == pytest.approx(saved[key] * n), key  # a fraction of 6 images
  assert saved["accuracy"] == pytest.approx(np.mean([c["label"] == c["pred"]
                                                     for c in saved["per_case"]]))
  assert {"auc/background", "auc/organ", "auc/tumour", "teacher/auc/tumour"} <= set(saved)
  rows = [json.loads(line) for line in open(tree / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  for name in ("tree_filters.png", "tree_path.png"):
    png = tree / "report" / name
    assert png.stat().st_size > 5000, name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_the_teacher_is_restored_once_per_checkpoint(runs, monkeypatch):
  """Training batches and evaluation share one restored teacher; a new checkpoint in the
  teacher's workdir restores it again."""
  from medjax.inference import restore
  from medjax.train.tasks import distillation
  calls = []
  real = restore.load_run
  monkeypatch.setattr(restore, "load_run", lambda path: calls.append(path) or real(path))
  distillation._teacher_apply.cache_clear()
  f1 = distillation.teacher_logits_fn(runs["student"])
  f2 = distillation.teacher_logits_fn(runs["student"])
  assert f1 is f2 and len(calls) == 1
  images = np.zeros((2, 16, 16, 1), np.float32)  # the smoke patches
  assert f1(images).shape == (2, 3)
  ckpt = str(runs["root"] / "teacher" / "checkpoints")
  listdir = os.listdir  # a new checkpoint appears in the teacher's folder
  monkeypatch.setattr(distillation.os, "listdir",
                      lambda d: listdir(d) + (["999"] if str(d) == ckpt else []))
  distillation.teacher_logits_fn(runs["student"])
  assert len(calls) == 2


@pytest.mark.e2e
def test_the_tree_trains_as_a_plain_classifier(runs, tmp_path):
  """`task=classification`, `model.name=soft_tree`: mixture CE, no teacher."""
  c = soft_tree_patches.get_config("hard,smoke")
  c.data_dir = runs["data_dir"]
  c.task = "classification"
  del c["distill"]
  c.num_steps = 2
  c.model.depth = 2
  results = loop.train_and_evaluate(c, str(tmp_path / "tree_classifier"))
  assert 0.0 <= results["accuracy"] <= 1.0 and len(results["per_case"]) == 6
  rows = [json.loads(line) for line in open(tmp_path / "tree_classifier" / "metrics.jsonl")]
  assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)


def _empty_folder(path) -> str:
  os.makedirs(path, exist_ok=True)
  return str(path)


@pytest.mark.e2e
@pytest.mark.parametrize("make_teacher, student_change, expected", [
    (lambda root: str(root / "no_such_run"), {}, "no such folder"),
    (lambda root: _empty_folder(root / "not_a_run"), {}, "config.json: missing"),
    (lambda root: str(root / "tree"), {}, "a 'distillation' run"),
    (lambda root: str(root / "teacher"), {"intensity_stats": (0.0, 100.0)},
     "the teacher has intensity_stats=(50.0, 125.0), the student (0.0, 100.0)"),
])
def test_bad_teacher_is_a_one_line_error_naming_it(runs, tmp_path, make_teacher, student_change,
                                                   expected):
  teacher = make_teacher(runs["root"])
  config = ml_collections.ConfigDict(runs["student"].to_dict())
  config.update(student_change)
  config.distill.teacher = teacher
  workdir = tmp_path / "student"
  with pytest.raises(InputError) as error:
    loop.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert "\n" not in message and f"config.distill.teacher={teacher}" in message
  assert expected in message
  assert not workdir.exists() or not os.listdir(workdir)  # nothing written
