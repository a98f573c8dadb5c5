"""Training: one run from config to report.

* `run.train_and_evaluate(config, workdir)`: the entry point (`experiments.main`):
  a cascade config goes to `cascade`, any other to `loop`.
* `loop`: one resumable run of one task; `tasks/`: what a run learns and how it
  is scored (a new task: one module + one line in `tasks.TASKS`).
* `cascade`: two ordinary runs (organ, then lesion in the organ box) and a joint evaluation.
* `predictor`: a trained run or cascade as a function of a raw image
  (evaluation and `experiments.predict` share it).
* `evaluate` scores, `report` draws; `workdir` owns every file name and write.
* `step` (the SPMD step), `state`, `optim`, `checkpoint` (orbax), `writer`
  (metrics.jsonl + TensorBoard), `config_check`, `model_factory`, `restore`.
"""
