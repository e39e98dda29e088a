"""memtrain_jax: self-supervised memory-agent training (MemTrain) in JAX/Flax."""

from pathlib import Path

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.11",
    "optax",
    "orbax-checkpoint",
    "grain",
    "sentencepiece",
    "tensorflow-datasets",
    "ml-collections",
    "absl-py",
    "numpy",
    "safetensors",
    "tokenizers",
    "gguf",
    "tqdm",
    "tensorboardX",
    "matplotlib",  # memtrain plot: reward curves as PNG
    # Wikipedia paragraphs, entities and retrieval (data pipeline).
    "mwparserfromhell",
    "pyarrow",
    "bm25s",
    "spacy>=3.8,<3.9",
]

EXTRAS_REQUIRE = {
    # The dense retriever embeds paragraphs with a torch sentence-embedding model.
    "dense": ["torch", "transformers"],
    "test": [
        "pytest",
        "hypothesis",
        "scipy",
        "ruff",
        # Ships a real Wikipedia XML dump sample (206 pages) that the source tests parse.
        "gensim",
        # Numerical references only; never imported by the library itself.
        "torch==2.13.0",
        "transformers",
        "accelerate",
        # libtpu: `memtrain plan` and its tests compile for TPU slices on this CPU machine (no TPU needed).
        "jax[tpu]",
    ],
    # TPU VMs: libtpu, and gs:// paths for the pool files and workdirs (etils.epath through gcsfs).
    "tpu": ["jax[tpu]", "gcsfs"],
}

setup(
    name="memtrain_jax",
    version="0.1.0",
    description="MemTrain: self-supervised training of LLM agent memory, in JAX/Flax.",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["memtrain_jax", "memtrain_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "memtrain=memtrain_jax.tools.main:run",
        ],
    },
)
