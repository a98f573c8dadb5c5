"""Training: one run from config to report.

* `run.train_and_evaluate(config, workdir)`: the entry point (`experiments.main`):
  sets up the compilation cache (`compile_cache`), then hands a cascade config
  to `cascade` and any other to `loop`.
* `loop`: one resumable run of one task; `tasks/`: what a run learns and how it
  is scored (segmentation, classification, detection, distillation, finetune,
  linear_probe; a new task: one module + one line in `tasks.TASKS`).
* `cascade`: two ordinary runs (organ, then lesion in the organ box) and a joint evaluation.
* `warm_start` (`config.init_from`) and `optim` (frozen stages and their
  BatchNorm, per-stage learning rates): transfer learning.
* `evaluate` scores, `report` / `tree_report` draw (`detection_scores` /
  `detection_report` for detection runs: FROC, CPM, mAP; froc.png, box slices);
  `workdir` owns every file name and write.
* `step` (the SPMD step, `Objective` for task-specific losses), `state`,
  `checkpoint` (orbax), `writer` (metrics.jsonl + TensorBoard), `config_check`,
  `model_factory`, `config_data` (the data a config names: splits, plan, normalisation).

Predicting with a trained run is `medjax.inference`'s job.
"""
