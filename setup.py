"""medjax: deep learning for medical images in JAX/Flax, with Pallas kernels.

Versions are pinned so that a fresh install is the one the test suite ran on
(CPU, Python 3.11). `pip install -e ".[test]"` adds the test tools; the `gpu`
extra pulls the CUDA build of jaxlib.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",  # builders + tfds.data_source; TensorFlow itself is not needed
    "array-record==0.8.6",
    "grain==0.2.18",
    "absl-py==2.5.1",
    "ml-collections==1.1.0",
    "etils==1.15.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",  # TensorBoard event files without TensorFlow
    "protobuf==7.36.2",
    "nibabel==5.4.2",  # NIfTI
    "pydicom==3.0.2",  # DICOM series
    "highdicom==0.28.2",  # DICOM Segmentation objects for PACS viewers (medjax.data.io.dicom_seg)
    "pynrrd==1.1.3",  # NRRD
    "pyyaml==6.0.3",  # nnDetection's dataset.yaml (already required by flax and ml-collections)
    "safetensors==0.8.0",  # pretrained weights without PyTorch or pickles (medjax.weights)
]

setup(
    name="medjax",
    version="0.1.0",
    description="JAX/Flax deep learning for medical images: models, losses, metrics, Pallas kernels.",
    python_requires=">=3.11",
    # every package below medjax/ and experiments/; `kernels/` installs as `medjax_kernels`
    # (PyPI has an unrelated `kernels`). `benchmarks/` is not installed: run it from a clone.
    packages=(find_packages(include=["medjax", "medjax.*", "experiments", "experiments.*"])
              + ["medjax_kernels"]
              + [f"medjax_kernels.{name}" for name in find_packages("kernels")]),
    package_dir={"medjax_kernels": "kernels"},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch (CPU) checks the torchvision importer against PyTorch (tests/test_weights_torchvision.py);
        # on a CUDA machine install it from https://download.pytorch.org/whl/cpu to avoid the CUDA wheels.
        # mlperf-logging: MLPerf's own mllog writer and compliance checker (the MLPerf 3D
        # U-Net run logs with it, tests/test_mlperf_run.py checks its log with it).
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "torch==2.13.0",
                 "mlperf-logging==4.1.68"],
        "mlperf": ["mlperf-logging==4.1.68"],
        "gpu": ["jax[cuda12]==0.10.2"],
        # `python -m benchmarks.bench_nms` (MONAI's `non_max_suppression`) and
        # `python -m benchmarks.vs_torch` (the PyTorch baselines, MONAI's sliding-window
        # inference): benchmarks only, the library and the tests never import MONAI.
        "bench": ["monai==1.6.1", "torch==2.13.0"],
        # `python -m benchmarks.compile_check` (compile the Pallas kernels for an H100 on a
        # CPU machine). Installed by `--install_tools` into a side folder, never into the
        # main environment (the CUDA plugin makes every CPU `import jax` print errors);
        # nvidia-cuda-nvcc only for its ptxas 12.9 (40 MB, instead of triton's 1 GB).
        "gpu-check": ["jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2",
                      "nvidia-cuda-nvcc-cu12==12.9.86"],
        # `--target tpu-v5e`: libtpu of jax[tpu]==0.10.2 (its compile-only TPU client), put
        # into a side folder by `--install_tools` (benchmarks.compile_check.tpu.PINS).
        "tpu-check": ["libtpu==0.0.42"],
    },
)
