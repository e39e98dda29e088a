"""Every policy source (gguf, hf, init) through `load_policy`, `memtrain train` and `memtrain chat`, including a
`paper`-shaped run on a tiny HuggingFace checkpoint and a small Wikipedia XML dump."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from memtrain_jax.checkpoint.gguf import default_gguf_path
from memtrain_jax.checkpoint.hf import save_hf_checkpoint
from memtrain_jax.checkpoint.policy import load_policy
from memtrain_jax.config import load_config
from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.model.transformer import unstack_layers
from memtrain_jax.sharding import DEFAULT_RULES, make_mesh
from memtrain_jax.train import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUMP = (
    Path(importlib.util.find_spec("gensim").submodule_search_locations[0])
    / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama with SmolLM2's tokenizer and chat template, as a HuggingFace folder: (dir, params)."""
    values = load_config("models.py:tiny").to_dict()
    values["vocab_size"] = tokenizer.vocab_size
    config = ModelConfig.from_dict(values)
    params = jax.device_get(init_params(config, jax.random.key(7)))
    out = tmp_path_factory.mktemp("tiny-hf")
    save_hf_checkpoint(config, params, out)
    tokenizer.save(out)
    return out, params


def _model_section(source: str, path: str = "", preset: str = "", **choices) -> ml_collections.ConfigDict:
    section = load_config("memtrain.py:cpu").model
    section.source, section.path, section.preset = source, path, preset
    section.cache_dir = ""
    for key, value in choices.items():
        section[key] = value
    return section


@pytest.mark.parametrize("choices", [{}, {"dtype": "bfloat16", "remat": "full"}, {"scan_layers": True}])
def test_load_policy_hf_reads_the_folder_with_the_runs_choices(hf_dir, choices):
    """source="hf": the saved parameters, bit for bit, in the run's layout and compute dtype."""
    directory, params = hf_dir
    mesh = make_mesh((1, 2, 2), devices=jax.devices()[:4])
    policy = load_policy(_model_section("hf", str(directory), **choices), mesh, DEFAULT_RULES)
    for key, value in choices.items():
        assert getattr(policy.model_config, key) == value
    assert policy.chat_format == "smollm2" and policy.tokenizer.vocab_size == policy.model_config.vocab_size
    loaded = jax.device_get(policy.params)
    if choices.get("scan_layers"):
        loaded = unstack_layers(loaded, policy.model_config)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_chat_template_saved_as_jinja_is_read(hf_dir, tmp_path):
    """transformers >= 4.43 saves the chat template as chat_template.jinja, not in tokenizer_config.json: the
    chat format is inferred from it the same (SmolLM2's template -> "smollm2"; without any template: "plain")."""
    directory = tmp_path / "jinja"
    shutil.copytree(hf_dir[0], directory)
    config_file = directory / "tokenizer_config.json"
    values = json.loads(config_file.read_text())
    template = values.pop("chat_template")
    config_file.write_text(json.dumps(values))
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    assert load_policy(_model_section("hf", str(directory)), mesh, DEFAULT_RULES).chat_format == "plain"
    (directory / "chat_template.jinja").write_text(template)
    assert load_policy(_model_section("hf", str(directory)), mesh, DEFAULT_RULES).chat_format == "smollm2"


def test_load_policy_gguf_and_init(tmp_path, tokenizer):
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    gguf = load_policy(_model_section("gguf", cache_dir=str(tmp_path)), mesh, DEFAULT_RULES)
    assert gguf.model_config.num_params() == sum(x.size for x in jax.tree.leaves(gguf.params))
    assert gguf.model_config.num_layers == 30 and gguf.chat_format == "smollm2"  # SmolLM2-135M
    init = load_policy(_model_section("init", preset="tiny"), mesh, DEFAULT_RULES, seed=3, tokenizer=tokenizer)
    again = load_policy(_model_section("init", preset="tiny"), mesh, DEFAULT_RULES, seed=3, tokenizer=tokenizer)
    assert init.model_config.vocab_size == tokenizer.vocab_size
    for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the seed fixes the initialisation


def _cli(*args: str, devices: int = 1, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    command = [sys.executable, "-m", "memtrain_jax.tools.main", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_paper_run_on_a_tiny_hf_checkpoint_and_an_xml_dump(hf_dir, tmp_path):
    """`configs/memtrain.py:paper` (spaCy entities, dense retrieval, a Wikipedia XML dump, source="hf") trains two
    steps at small sizes; then `memtrain chat` answers from the same folder."""
    directory, _ = hf_dir
    workdir = tmp_path / "paper"
    sizes = {
        "data.pool.path": str(DUMP),
        "data.pool.max_paragraphs": 400,
        "data.num_documents": 8,
        "data.document.num_paragraphs": 3,
        "data.document.num_similar": 1,
        "data.document.min_tokens": 0,
        "data.document.max_tokens": 0,
        "data.chunking.chunk_size": 96,
        "data.chunking.max_chunks": 2,
        "data.loader.batch_size": 2,
        "data.cache_dir": str(tmp_path / "cache"),
        "agent.group_size": 2,
        "agent.recall_group_size": 2,
        "agent.memory_tokens": 16,
        "agent.answer_tokens": 8,
        "agent.recall_tokens": 8,
        "train.steps": 2,
        "train.eval_every": 0,
        "train.eval_episodes": 2,
        "train.length_block": 128,
        "train.async_checkpoints": False,
        "rl.dapo_filter": False,
        "model.path": str(directory),
    }
    flags = [f"--config.{k}={v}" for k, v in sizes.items()]
    done = _cli("train", "--config", "configs/memtrain.py:paper", f"--workdir={workdir}", *flags)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = read_metrics(str(workdir))
    assert [r["step"] for r in records] == [1, 2] and all(r["phase"] == "grpo" for r in records)
    assert np.isfinite([r["loss"] for r in records]).all()
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["model"]["source"] == "hf" and stored["data"]["entities"]["extractor"] == "spacy"
    chat = _cli(
        "chat", "--config", "configs/memtrain.py:paper", f"--config.model.path={directory}", "--max_new_tokens=4"
    )
    assert chat.returncode == 0, chat.stdout[-3000:] + chat.stderr[-3000:]
    assert "chat format 'smollm2'" in chat.stdout and "assistant:" in chat.stdout


@pytest.mark.parametrize("source", ["gguf", "init"])
def test_train_two_steps_from_gguf_and_init(source, tmp_path):
    variant = "cpu" if source == "gguf" else "tiny"
    flags = [
        "--config.train.steps=2",
        "--config.train.format_steps=0",
        "--config.train.eval_every=0",
        "--config.train.async_checkpoints=False",
        "--config.rl.dapo_filter=False",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        f"--config.model.cache_dir={tmp_path / 'cache'}",
    ]
    if source == "gguf":
        flags += [f"--config.model.path={default_gguf_path()}", "--config.agent.memory_tokens=8"]
        flags += ["--config.data.chunking.max_chunks=1", "--config.data.loader.batch_size=1"]
        flags += ["--config.agent.group_size=2", "--config.agent.recall_group_size=2"]
    done = _cli("train", "--config", f"configs/memtrain.py:{variant}", f"--workdir={tmp_path / 'w'}", *flags)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [r["step"] for r in read_metrics(str(tmp_path / "w"))] == [1, 2]


def test_bad_model_paths_are_named(tmp_path):
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.gguf").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match=r"is a directory \(it holds a.gguf\); give the .gguf file itself"):
        load_policy(_model_section("gguf", str(tmp_path / "models"), cache_dir=str(tmp_path)), mesh, DEFAULT_RULES)
    with pytest.raises(ValueError, match="is ignored with config.model.source='init'"):
        load_policy(_model_section("init", str(tmp_path), preset="tiny"), mesh, DEFAULT_RULES)
