"""Installs mbt: multimodal fusion transformers for audio-visual video classification."""

import setuptools

_CORE = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "ml_collections>=1.1",
    "numpy>=2.0",
    # ml_dtypes 0.7.0 takes 0.55 CPU-s to import (it adds its numpy ufunc loops one by one,
    # each a linear search over the loops so far); 0.6.0 takes 0.01 s. jax and TensorFlow
    # import it in every process: `import jax` 1.16 -> 0.59 CPU-s with 0.6.0.
    "ml_dtypes>=0.5.1,<0.7",
    "absl-py>=2.0",
    "matplotlib>=3.8",
]
_DATA = [
    "tensorflow-cpu>=2.21",
    "tensorflow-datasets>=4.9.10",
    "tensorboard>=2.21",
    "av>=18.1",
    "h5py>=3.10",
    "grain>=0.2.18",  # random-access input (mbt.data.grain_input), with array_record
]
_TFDS_CLI = ["apache-beam>=2.60", "mlcroissant>=1.0.9"]
# Reference implementations the tests compare against, and the style checks CI runs
# (pinned: another ruff or mypy version formats or reports differently).
# `tensorflow_datasets.testing` (mock_data, DatasetBuilderTestCase) imports dill.
_TEST = [
    "pytest>=8.0",
    "pytest-xdist>=3.5",  # the README's test command runs the suite in 2 worker processes
    "scikit-learn>=1.4",
    "librosa>=0.10",
    "dill>=0.3.8",
    "safetensors>=0.4",  # writes the timm / Hugging Face ViT files mbt.pretrained.torch_vit reads
    "ruff==0.17.6",
    "mypy==2.4.1",
]

setuptools.setup(
    name="mbt",
    version="0.1.0",
    description=(
        "JAX/Flax audio-visual video classification: MBT (attention bottlenecks), "
        "Sparse Fusion Transformers and early-fusion C-LSTM."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["mbt", "mbt.*"]),
    # The official VGGSound class list (names only), read by mbt.data.builders.vggsound_spec.
    package_data={"mbt.data.builders": ["vggsound_classes.txt"]},
    python_requires=">=3.10",
    # Lower bounds: the versions the test suite was run with (older ones are untested).
    # The core (models, train step, trainer, flops, benchmarks) needs no TensorFlow.
    install_requires=_CORE,
    extras_require={
        # The input side: TFDS builders, the tf.data and grain pipelines, media decoding, predict.
        "data": _DATA,
        # TFDS's `tfds build` command imports these at start-up, even for plain builds;
        # apache-beam also runs Beam builds (`--beam_pipeline_options`; Dataflow: apache-beam[gcp]).
        "tfds_cli": _TFDS_CLI,
        "test": _DATA + _TFDS_CLI + _TEST,
    },
)
