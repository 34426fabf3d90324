"""rosepo-jax: RosePO preference alignment for LLM recommenders, in JAX/Flax."""

import setuptools

setuptools.setup(
    name="rosepo-jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of RosePO (arXiv 2410.12519): smoothed "
    "personalized preference optimization for LLM-based recommenders.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["rosepo_jax", "rosepo_jax.*", "launch", "configs"]),
    install_requires=[
        # jax 0.10.x runs on Python 3.11; jax 0.11.x (Python >= 3.12) is what GPU images ship.
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5",  # optax.tree.norm
        "orbax-checkpoint>=0.11",
        "etils[epath]>=1.7",  # rosepo_jax.files: local paths and gs:// (with the gcs extra)
        "transformers>=4.50",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        # tensorflow-datasets uses it on every Python but declares it only for < 3.9.
        "importlib_resources>=5",
        "absl-py>=2.1",
        "ml_collections>=1.0",
        "safetensors>=0.4.3",
        "tokenizers>=0.21",
        "numpy>=1.26",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "tqdm>=4.66",
        "matplotlib>=3.8",  # the report stage's plots
    ],
    extras_require={
        # torch is installed separately as exactly torch==2.13.0 (CPU build); see .ci/run.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "accelerate>=1.0", "gguf>=0.10", "peft>=0.13"],
        "gguf": ["gguf>=0.10"],
        # --workdir=gs://...: epath's fsspec backend (gcsfs brings google-cloud-storage, which
        # tensorboardX uses for gs://).
        "gcs": ["gcsfs>=2024.2"],
        # The peers of benchmarks/ (docs/benchmarks.md): trl's DPOTrainer (with its datasets
        # dependency) for preference_step.py; torch==2.13.0 is installed separately as above.
        "bench": ["trl>=1.16", "datasets>=3.0"],
    },
)
