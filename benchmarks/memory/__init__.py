"""Host-memory benchmarks (Linux): what the launchers `inference_memory`, `prepare_memory` and
`train_memory` measure.

* `rss`: the resident set size of this process, now and at its peak;
* `inference`: sliding-window inference on a large random volume;
* `prepare`: preprocessing one large synthetic CT case, in a fresh subprocess;
* `train`: training on nnU-Net raw folders of a growing number of cases, one
  subprocess per folder.
"""
