"""The package's import arrows: data code and tokenizers load no model code (Grain workers import the data
modules), and the top-level API still resolves, lazily."""

import subprocess
import sys

import pytest

DATA_MODULES = [
    "memtrain_jax.data",
    "memtrain_jax.data.chunking",
    "memtrain_jax.data.documents",
    "memtrain_jax.data.entities",
    "memtrain_jax.data.episodes",
    "memtrain_jax.data.masking",
    "memtrain_jax.data.pipeline",
    "memtrain_jax.data.prebuilt",
    "memtrain_jax.data.prepare",
    "memtrain_jax.data.probes",
    "memtrain_jax.data.qa",
    "memtrain_jax.data.retrieval",
    "memtrain_jax.data.sources",
    "memtrain_jax.data.stream",
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


@pytest.mark.parametrize("module", ["prepare", "episodes", "prebuilt", "stream"])
def test_the_pipeline_modules_do_not_import_the_facade(module):
    """The arrows run one way: pipeline.py re-exports the subject modules, which never import it."""
    loaded = _loaded_after(f"import memtrain_jax.data.{module}")
    assert "memtrain_jax.data.pipeline" not in loaded


def test_the_data_package_loads_its_modules_lazily():
    loaded = _loaded_after("import memtrain_jax.data")
    assert "grain" not in loaded and not any(m.startswith("memtrain_jax.data.") for m in loaded)


def test_the_data_api_resolves_lazily():
    import memtrain_jax.data as data
    from memtrain_jax.data import episodes, pipeline, prebuilt, prepare, stream

    assert data.make_dataset is stream.make_dataset is pipeline.make_dataset
    assert data.prepare_data is prepare.prepare_data and data.EPISODE_FIELDS is episodes.EPISODE_FIELDS
    assert data.write_documents is prebuilt.write_documents
    assert sorted(data.__all__) == sorted(n for n in data.__all__ if hasattr(data, n))
    assert all(hasattr(pipeline, n) for n in pipeline.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = data.no_such_name


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
