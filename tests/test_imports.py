"""The package's import arrows: data code and tokenizers load no model code (Grain workers import the data
modules), and the top-level API still resolves, lazily."""

import subprocess
import sys

import pytest

DATA_MODULES = [
    "memtrain_jax.data.chunking",
    "memtrain_jax.data.documents",
    "memtrain_jax.data.entities",
    "memtrain_jax.data.masking",
    "memtrain_jax.data.pipeline",
    "memtrain_jax.data.probes",
    "memtrain_jax.data.qa",
    "memtrain_jax.data.retrieval",
    "memtrain_jax.data.sources",
    "memtrain_jax.data.types",
    "memtrain_jax.tokenizer",
    "memtrain_jax.tokenizer.gguf_tokenizer",
]


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", DATA_MODULES)
def test_data_and_tokenizer_modules_load_no_model_code(module):
    loaded = _loaded_after(f"import {module}")
    # grain itself imports jax and orbax; the model's own stack (flax, optax, our model/sampler/checkpoint) stays out
    ours = ("memtrain_jax.model", "memtrain_jax.sampler", "memtrain_jax.checkpoint", "memtrain_jax.agent")
    heavy = sorted(m for m in loaded if m in ("flax", "optax") or m.startswith(ours))
    assert heavy == [], f"importing {module} loaded {heavy}"


def test_loading_a_gguf_tokenizer_imports_no_checkpoint_code():
    loaded = _loaded_after(
        "from memtrain_jax.tokenizer import load_tokenizer\n"
        "from memtrain_jax.tokenizer.gguf_tokenizer import default_gguf_path\n"
        "assert load_tokenizer(default_gguf_path()).encode('hello world')"
    )
    assert not any(m.startswith("memtrain_jax.checkpoint") or m == "flax" for m in loaded)


def test_the_top_level_api_resolves_lazily():
    import memtrain_jax
    from memtrain_jax.model import forward
    from memtrain_jax.sampler import generate

    assert memtrain_jax.forward is forward and memtrain_jax.generate is generate
    assert sorted(memtrain_jax.__all__) == sorted(n for n in memtrain_jax.__all__ if hasattr(memtrain_jax, n))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = memtrain_jax.no_such_name
