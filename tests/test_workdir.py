"""medjax.train.workdir: the one owner of a run's file names, atomic writes and config round trip."""
import json
import os

import ml_collections
import pytest

from medjax.errors import InputError
from medjax.train import tasks
from medjax.train.workdir import Workdir, atomic_write, atomic_write_json, config_from_json


def test_atomic_write_replaces_only_on_success(tmp_path):
  path = tmp_path / "eval.json"
  atomic_write_json(str(path), {"dice/organ": 0.5})
  with pytest.raises(RuntimeError):
    with atomic_write(str(path)) as tmp:
      with open(tmp, "w") as f:
        f.write('{"dice/organ": 0.')  # half written, then the process "dies"
      raise RuntimeError("killed mid-write")
  assert json.loads(path.read_text()) == {"dice/organ": 0.5}
  assert sorted(os.listdir(tmp_path)) == ["eval.json"]  # no temporary file left


def test_atomic_write_keeps_the_extension_for_format_sniffing_writers(tmp_path):
  with atomic_write(str(tmp_path / "case_seg.nii.gz")) as tmp:
    assert tmp.endswith(".nii.gz") and os.path.dirname(tmp) == str(tmp_path)
    open(tmp, "wb").close()
  assert os.listdir(tmp_path) == ["case_seg.nii.gz"]


def test_config_round_trip_gives_tuples_back(tmp_path):
  config = ml_collections.ConfigDict({"model": {"name": "unet", "kernel_sizes": ((1, 3, 3), (3, 3, 3))},
                                      "patch_size": (8, 16, 16), "eval": {"mirror_axes": ()}})
  workdir = Workdir(str(tmp_path / "run")).create()
  workdir.write_config(config)
  back = workdir.read_config()
  assert back.patch_size == (8, 16, 16)
  assert back.model.kernel_sizes == ((1, 3, 3), (3, 3, 3))
  assert back.eval.mirror_axes == ()
  assert config_from_json(json.loads(config.to_json())).to_dict() == back.to_dict()


def test_bad_workdirs_get_one_line_errors_naming_the_path(tmp_path):
  with pytest.raises(InputError, match="no such folder"):
    Workdir(str(tmp_path / "missing")).read_config()
  workdir = Workdir(str(tmp_path))
  with pytest.raises(InputError, match="config.json: missing"):
    workdir.read_config()
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(InputError, match="expected a run config"):
    workdir.read_config()
  with pytest.raises(InputError, match="eval.json: missing"):
    workdir.read_eval()
  with pytest.raises(InputError, match="checkpoints: no checkpoints"):
    workdir.latest_checkpoint()


def test_names_live_in_the_workdir(tmp_path):
  workdir = Workdir(str(tmp_path))
  assert workdir.eval_path == str(tmp_path / "eval.json")
  assert workdir.stage("stage2").config_path == str(tmp_path / "stage2" / "config.json")
  assert workdir.report_path("a.png") == str(tmp_path / "report" / "a.png")
  assert os.path.isdir(tmp_path / "report")


def test_unknown_task_is_named():
  assert {"segmentation", "classification"} <= set(tasks.TASKS)
  with pytest.raises(InputError, match="config.task='lesion_tracking'"):
    tasks.get_task("lesion_tracking")
