"""The MLPerf Training 3D U-Net benchmark (KiTS19) as a medjax run.

The reference is mlcommons/training `image_segmentation/pytorch` (retired to
`retired_benchmarks/unet3d/pytorch` after round 4.0); this package holds what is
particular to the benchmark's rules, the rest being ordinary medjax parts:

* `evaluation`: the reference's quality metric, the mean of the kidney and
  tumour Dice over the 42 validation cases (its sliding window, cropping and
  padding, Gaussian weights and `DiceScore`);
* `log`: MLPerf's `mllog` events written to the run's `mlperf.log`;
* `run`: the training-loop callback (`medjax.train.callbacks`) that logs the
  run, evaluates every 20 epochs from epoch 1000 (scaled with the global batch
  size) and stops at mean Dice 0.908 or at the epoch limit;
* `task`: the `mlperf_unet3d` task (the reference's input pipeline, the callback).

Elsewhere: the model `medjax.models.MLPerfUNet3D`, the `kits19` dataset
(`medjax.data.builders.kits19`, preprocessing `medjax.data.preprocessing.kits19`),
the sampler `medjax.data.pipeline.mlperf_sampler`, epoch-based step counts
`medjax.train.epochs`, and the config `experiments/configs/mlperf_unet3d_kits19.py`.
"""
