"""The one owner of a workdir: its file names, atomic writes, the config round trip,
and finding and restoring its checkpoint.

A workdir holds everything about one run:

| name | written by | content |
|---|---|---|
| `config.json` | the loop, before training | the full config (lists come back as tuples) |
| `checkpoints/<step>/` | the loop (orbax) | the training state |
| `metrics.jsonl`, `tensorboard/` | `writer.MetricWriter` | training scalars |
| `eval.json` | the task's evaluation | `metric/class` means + `per_case` |
| `report/*.png` | `medjax.train.report` | learning curves, case slices, metric box plots |
| `eval.csv` | the segmentation task | one row per test case and class |
| `postprocessing.json` | the segmentation task | rules chosen on validation (`medjax.postprocess`) |
| `detection_thresholds.json` | the detection task | clustering IoU, minimum size and score threshold chosen on validation (`medjax.inference.detect.Postprocessing`) |
| `plan.json` | `config_data.load_split` (folder datasets) | the dataset's preprocessing plan (`medjax.data.preprocessing.planning`), applied by `predictor` |
| `splits.json` | `config_data.load_split` (folder datasets) | the case ids of train / validation / test (fold, num_folds) |
| `skipped_cases.json` | `config_data.load_split` (folder datasets) | the bad cases left out (`skip_bad_cases`): `[{"case", "reason"}]` |
| `stage1/`, `stage2/` | a cascade | one ordinary workdir per stage |
| `stopped.json` | the loop | a callback ended training before `num_steps` (step, reason): the run is done |
| `mlperf.log` | `medjax.mlperf.run` | MLPerf `mllog` events of an MLPerf run (`mlperf_resumed_at_<step>.log` for a resumed one) |

Nobody else spells these names: the loop, the tasks, the cascade, `restore`,
`config_check`, the sweep and `experiments.predict` all go through `Workdir`.
Every file is written to a temporary name in the same folder and renamed into
place (`atomic_write`), so a run killed mid-write never leaves a truncated
`config.json` or `eval.json` behind, and a reader sees the old or the new file.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Union

import ml_collections

from medjax.errors import InputError

CONFIG = "config.json"
EVAL = "eval.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
REPORT = "report"
PLAN = "plan.json"
SPLITS = "splits.json"
SKIPPED_CASES = "skipped_cases.json"
POSTPROCESSING = "postprocessing.json"
DETECTION_THRESHOLDS = "detection_thresholds.json"
EVAL_CSV = "eval.csv"
STOPPED = "stopped.json"
MLPERF_LOG = "mlperf.log"


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it to `path` if the block succeeds.

  The temporary name keeps the file's extensions (`.x.tmp.nii.gz` for
  `x.nii.gz`), so writers that choose a format by extension (nibabel) work.
  On an exception the temporary file is removed and `path` is untouched.
  """
  folder, base = os.path.split(os.path.abspath(path))
  stem, dot, ext = base.partition(".")
  tmp = os.path.join(folder, f".{stem}.tmp{dot}{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write_text(path: str, text: str) -> str:
  """Writes `text` to `path` through a temporary file and a rename."""
  with atomic_write(path) as tmp:
    with open(tmp, "w", newline="") as f:
      f.write(text)
  return path


def atomic_write_json(path: str, obj: Any) -> str:
  """Writes `obj` as indented JSON to `path` through a temporary file and a rename."""
  return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use (nested, e.g. `model.kernel_sizes`)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def config_from_json(raw: Any) -> ml_collections.ConfigDict:
  """A config read back from JSON: a ConfigDict with lists as tuples."""
  return ml_collections.ConfigDict(_tuples(raw))


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _read_json(path: str, what: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise InputError(f"{path}: missing; expected {what} of a run") from None
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: unreadable ({_first_line(e)})") from None


class Workdir:
  """The folder of one run (or of one cascade stage).

  Args:
    path: the folder; created by `create()`, never by the constructor.
  """

  def __init__(self, path: str):
    self.path = os.fspath(path)

  @classmethod
  def of(cls, workdir: Union[str, os.PathLike, "Workdir"]) -> "Workdir":
    """`workdir` itself if it is a `Workdir`, else the `Workdir` of that path."""
    return workdir if isinstance(workdir, Workdir) else cls(os.fspath(workdir))

  def __repr__(self) -> str:
    return f"Workdir({self.path!r})"

  def __fspath__(self) -> str:
    return self.path

  # --- names -------------------------------------------------------------
  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def config_path(self) -> str:
    return self.file(CONFIG)

  @property
  def eval_path(self) -> str:
    return self.file(EVAL)

  @property
  def postprocessing_path(self) -> str:
    return self.file(POSTPROCESSING)

  @property
  def eval_csv_path(self) -> str:
    return self.file(EVAL_CSV)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.abspath(self.file(CHECKPOINTS))

  @property
  def metrics_path(self) -> str:
    return self.file(METRICS)

  @property
  def tensorboard_dir(self) -> str:
    return self.file(TENSORBOARD)

  def report_path(self, name: str) -> str:
    """`report/<name>`, creating `report/`."""
    folder = self.file(REPORT)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)

  def stage(self, name: str) -> "Workdir":
    """The workdir of one stage of a multi-stage run (a cascade's `stage1`, `stage2`)."""
    return Workdir(self.file(name))

  def create(self) -> "Workdir":
    os.makedirs(self.path, exist_ok=True)
    return self

  # --- config ------------------------------------------------------------
  def has_config(self) -> bool:
    return os.path.exists(self.config_path)

  def write_config(self, config: ml_collections.ConfigDict) -> str:
    return atomic_write_text(self.config_path, config.to_json(indent=2))

  def read_config_json(self) -> dict:
    """The raw JSON dict of `config.json`; InputError naming the path if unreadable."""
    if not os.path.isdir(self.path):
      raise InputError(f"--workdir={self.path}: no such folder; expected a trained run's workdir")
    try:
      with open(self.config_path) as f:
        raw = json.load(f)
    except FileNotFoundError:
      raise InputError(f"{self.config_path}: missing; expected the workdir of a run of "
                       "experiments.main") from None
    except (OSError, ValueError) as e:
      raise InputError(f"{self.config_path}: not a readable config ({_first_line(e)})") from None
    if not isinstance(raw, dict) or "model" not in raw:
      raise InputError(f"{self.config_path}: expected a run config with a 'model' field")
    return raw

  def read_config(self) -> ml_collections.ConfigDict:
    """`config.json` as a ConfigDict (lists as tuples)."""
    return config_from_json(self.read_config_json())

  # --- evaluation ---------------------------------------------------------
  def has_eval(self) -> bool:
    return os.path.exists(self.eval_path)

  def write_eval(self, results: dict) -> str:
    return atomic_write_json(self.eval_path, results)

  def write_postprocessing(self, rules: dict) -> str:
    """`postprocessing.json` (`medjax.postprocess.rules_to_json`); read by `read_postprocessing_rules`."""
    return atomic_write_json(self.postprocessing_path, rules)

  def read_postprocessing_rules(self):
    """The post-processing rules stored here (`tuple[postprocess.Rule, ...]`), or None if
    the run has none. A cascade's workdir holds the rules of its joint prediction."""
    from medjax import postprocess  # scipy.ndimage: loaded only when a run has rules
    path = self.postprocessing_path
    if not os.path.exists(path):
      return None
    return postprocess.rules_from_json(_read_json(path, "post-processing rules"), path=path)

  @property
  def detection_thresholds_path(self) -> str:
    return self.file(DETECTION_THRESHOLDS)

  def write_detection_thresholds(self, record: dict) -> str:
    """`detection_thresholds.json`: `{"postprocessing": {...}, "validation": {...}}` of a
    detection run (`medjax.train.tasks.detection`)."""
    return atomic_write_json(self.detection_thresholds_path, record)

  def read_detection_thresholds(self):
    """The `medjax.inference.detect.Postprocessing` stored here, or None if there is none."""
    from medjax.inference import detect  # pylint: disable=import-outside-toplevel
    path = self.detection_thresholds_path
    if not os.path.exists(path):
      return None
    raw = _read_json(path, "detection thresholds")
    try:
      return detect.Postprocessing.from_json(raw["postprocessing"])
    except (KeyError, TypeError, ValueError) as e:
      raise InputError(f"{path}: not a detection thresholds file ({_first_line(e)}); expected "
                       "{\"postprocessing\": {\"iou_threshold\", \"min_size_mm\", "
                       "\"score_threshold\", \"max_detections\"}}") from None

  def write_eval_csv(self, text: str) -> str:
    return atomic_write_text(self.eval_csv_path, text)

  # --- dataset plan and splits (folder datasets) -------------------------------
  @property
  def plan_path(self) -> str:
    return self.file(PLAN)

  @property
  def splits_path(self) -> str:
    return self.file(SPLITS)

  def has_plan(self) -> bool:
    return os.path.exists(self.plan_path)

  def write_plan(self, plan: dict) -> str:
    return atomic_write_json(self.plan_path, plan)

  def read_plan(self) -> dict:
    """`plan.json`; InputError naming the path if unreadable."""
    return _read_json(self.plan_path, "the dataset plan")

  def write_splits(self, splits: dict) -> str:
    return atomic_write_json(self.splits_path, splits)

  def read_splits(self) -> dict:
    """`splits.json`; InputError naming the path if unreadable."""
    return _read_json(self.splits_path, "the data splits")

  @property
  def skipped_cases_path(self) -> str:
    return self.file(SKIPPED_CASES)

  def write_skipped_cases(self, skipped: list) -> str:
    """The bad cases the dataset left out, `[{"case": id, "reason": str}]` (may be empty)."""
    return atomic_write_json(self.skipped_cases_path, skipped)

  def read_skipped_cases(self) -> list:
    """`skipped_cases.json`; InputError naming the path if unreadable."""
    return _read_json(self.skipped_cases_path, "the skipped cases")

  def read_eval(self) -> dict:
    """`eval.json`; InputError naming the path if missing or unreadable."""
    try:
      with open(self.eval_path) as f:
        return json.load(f)
    except FileNotFoundError:
      raise InputError(f"{self.eval_path}: missing; the run has not been evaluated") from None
    except (OSError, ValueError) as e:
      raise InputError(f"{self.eval_path}: unreadable ({_first_line(e)})") from None

  # --- early stop and the MLPerf log ------------------------------------------
  def write_stopped(self, step: int, reason: str) -> str:
    """`stopped.json`: training ended at `step` before `num_steps` (e.g. a quality target
    reached); a re-run of the command does not train further."""
    return atomic_write_json(self.file(STOPPED), {"step": int(step), "reason": reason})

  def read_stopped(self) -> Union[dict, None]:
    """The `write_stopped` record, or None when training was not stopped early."""
    path = self.file(STOPPED)
    return _read_json(path, "the early-stop record") if os.path.exists(path) else None

  def mlperf_log_path(self, start_step: int = 0) -> str:
    """`mlperf.log` of a run from scratch; a run resumed at `start_step` logs to
    `mlperf_resumed_at_<start_step>.log` (a resumed run is not an MLPerf timing run)."""
    if not start_step:
      return self.file(MLPERF_LOG)
    return self.file(f"mlperf_resumed_at_{int(start_step)}.log")

  # --- checkpoints -----------------------------------------------------------
  def has_checkpoint(self) -> bool:
    """Whether `checkpoints/` holds a finished checkpoint (a step folder: orbax names them by
    the step and renames a temporary folder to that name only when the save is complete);
    read without starting orbax, so a bad config stops before anything is opened."""
    try:
      return any(name.isdigit() for name in os.listdir(self.checkpoint_dir))
    except OSError:
      return False

  def checkpointer(self, *, every: int, max_to_keep: int = 2):
    """A `checkpoint.Checkpointer` writing to `checkpoints/` (created)."""
    from medjax.train.checkpoint import Checkpointer  # orbax is slow to import
    return Checkpointer(self.checkpoint_dir, every=every, max_to_keep=max_to_keep)

  def latest_checkpoint(self) -> tuple[int, dict]:
    """`(step, tree)` of the latest checkpoint as host arrays, restored without a target.

    Raises:
      InputError: no `checkpoints/` folder, no finished checkpoint, or an
        unreadable one (the message names the path).
    """
    from medjax.train.checkpoint import restore_latest  # orbax is slow to import
    if not os.path.isdir(self.checkpoint_dir):
      raise InputError(f"{self.checkpoint_dir}: no checkpoints; expected a trained run's workdir")
    return restore_latest(self.checkpoint_dir)

