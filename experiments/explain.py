r"""Explanation PNGs (saliency, SmoothGrad, integrated gradients, Grad-CAM, occlusion)
for one test case of a trained run.

  python -m experiments.explain --workdir=runs/unet3d --case=test_00003 \
      [--method=grad_cam,integrated_gradients] [--layer=up1] [--target_class=2] [--output=DIR]

The case is found by its id in the run's test split and normalised as in
training. A segmentation run is explained on one window of
`config.patch_size` centred on the target structure; the target is the mean
logit of `--target_class` (default: the last class, e.g. the tumour) over the
voxels predicted as that class. A classifier is explained on the whole image;
the target is the logit of `--target_class` (default: the predicted class).
Writes `<case>_<method>.png` per method and `<case>_methods.png` (all side by
side) to `--output` (default `<workdir>/report/explain/`) and prints one line
per PNG. An unknown case, method or layer ends in one `error:` line listing
what exists (exit status 2). The work is done by
`medjax.explain_report.explain_case`.
"""
from __future__ import annotations

from absl import app, flags, logging

from experiments import cli
from medjax import explain, explain_report
from medjax.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a trained run (one stage of a cascade).")
flags.DEFINE_string("case", None, "Case id in the test split, e.g. test_00003.")
flags.DEFINE_list("method", list(explain.METHODS), f"Some of {', '.join(explain.METHODS)}.")
flags.DEFINE_string("layer", None, "Grad-CAM layer, e.g. down0/conv0, bottleneck, up1 "
                    "(default: the last layer at the lowest resolution).")
flags.DEFINE_integer("target_class", None, "Class to explain (default: the last class of a "
                     "segmentation run, the predicted class of a classifier).")
flags.DEFINE_string("output", None, "Folder for the PNGs (default <workdir>/report/explain/).")
flags.mark_flags_as_required(["workdir", "case"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:  # orbax logs at INFO, TFDS warns about custom configs
    logging.set_verbosity(logging.ERROR)
  try:
    paths = explain_report.explain_case(FLAGS.workdir, FLAGS.case, methods=FLAGS.method,
                                        layer=FLAGS.layer, target_class=FLAGS.target_class,
                                        output=FLAGS.output)
  except InputError as e:
    cli.exit_with_error(e)
  for path in paths:
    print(path)


if __name__ == "__main__":
  cli.run(main)
