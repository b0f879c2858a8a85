"""Installs `adaptation`: decoder-only Gemma -> encoder-decoder (T5Gemma) and encoder-only adaptation."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "seqio==0.0.20",
    # `tensorflow`, not `tensorflow-cpu`: tensorflow-text requires `tensorflow` and both would install.
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",  # summaries; tensorflow 2.21 no longer pulls it in
    "importlib_resources",  # TFDS needs it at import time.
    "sentencepiece==0.2.3",
    "safetensors",
    "numpy",
    "matplotlib",
]

TEST = [
    "pytest",
    "torch==2.13.0",  # CPU build; an unpinned torch pulls CUDA wheels.
    "transformers==5.23.0",
    "scikit-learn",
    "scipy",
    "ruff",
]

setup(
    name="adaptation",
    version="0.1.0",
    description="Adapt decoder-only Gemma checkpoints into encoder-decoder (T5Gemma) and encoder-only models.",
    python_requires=">=3.11",
    packages=find_packages(include=["adaptation", "adaptation.*", "tasks", "tasks.*"]),
    package_data={"adaptation": ["gin/**/*.gin"]},
    install_requires=RUNTIME,
    extras_require={"test": TEST},
    entry_points={
        "console_scripts": [
            "adaptation-convert=adaptation.convert:main",
            "adaptation-train=adaptation.train:main",
            "adaptation-eval=adaptation.eval:main",
            "adaptation-infer=adaptation.infer:main",
        ]
    },
)
