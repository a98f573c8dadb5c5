"""Ablation sweeps: a grid of config values x seeds, each run a `python -m experiments.main`.

Modules, one job each:

* `grid`: `--sweep`/`--set`/`--seeds` specs -> `Cell`s (one per run), config field check;
* `runner`: runs cells as subprocesses, skips finished runs, stops cleanly on an interrupt;
* `aggregate`: mean and sample std over seeds of each cell's evaluation metrics;
* `report`: `results.csv`, `results.md`, `results.png`;
* `driver`: `sweep()`, all of the above for one command line (`experiments.sweep`).
"""
