"""Hugging Face checkpoint import/export, checked against transformers' own models in float32.

Tiny randomly initialised Llama (llama3 RoPE scaling, untied), Qwen2 (QKV bias, tied) and Qwen3
(q/k norm) models are built with transformers, saved with `save_pretrained`, imported, and must
give the same logits as the torch model; exporting must give a checkpoint transformers loads
back to the same logits.
"""

from __future__ import annotations

import copy
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from memtrain_jax.checkpoint.hf import (
    HFCheckpointError,
    config_from_hf,
    load_hf_checkpoint,
    save_hf_checkpoint,
)
from memtrain_jax.checkpoint.orbax_io import import_hf_to_orbax, restore_params
from memtrain_jax.model.transformer import (
    apply_model,
    forward,
    init_cache,
    param_shardings,
    rope_frequencies,
    stack_layers,
)
from memtrain_jax.sharding import make_mesh

VOCAB = 101
TOL = 1e-4  # float32 parity with torch


# The shapes of every test model here (config.json fields).
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)


def _hf_config(family: str):
    common = COMMON
    if family == "llama":
        # original_max_position_embeddings=64 puts the 8 frequencies of head_dim 16 in all three regimes
        # of llama3 scaling (kept, smoothed, divided by the factor) within a 24-token sequence.
        scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
        scaling["original_max_position_embeddings"] = 64
        return LlamaConfig(**common, head_dim=16, rope_theta=10000.0, rope_scaling=scaling, tie_word_embeddings=False)
    if family == "qwen2":
        return Qwen2Config(**common, rope_theta=1_000_000.0, tie_word_embeddings=True)
    return Qwen3Config(**common, head_dim=32, rope_theta=1_000_000.0, tie_word_embeddings=False)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """O(1)-scale weights (transformers' init is ~0.02 with unit norms and zero biases, too bland to test)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / np.sqrt(p.shape[-1]))


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def hf_model(request, tmp_path_factory):
    """(family, torch model, checkpoint directory written by save_pretrained)."""
    family = request.param
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_hf_config(family), attn_implementation="eager").eval()
    _randomize(model, seed=len(family))
    path = tmp_path_factory.mktemp(f"hf_{family}")
    model.save_pretrained(path)
    return family, model, str(path)


@pytest.fixture(scope="module")
def imported(hf_model):
    family, model, path = hf_model
    config, params = load_hf_checkpoint(path)
    return config, params


def _torch_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask.astype(np.int64))}
        return model(torch.tensor(tokens, dtype=torch.long), **kwargs).logits.float().numpy()


TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 24))


def test_config_matches_transformers(hf_model, imported):
    family, model, _ = hf_model
    config, _ = imported
    hf = model.config
    assert config.family == family
    assert (config.num_heads, config.num_kv_heads) == (hf.num_attention_heads, hf.num_key_value_heads)
    assert config.head_dim == model.model.layers[0].self_attn.head_dim
    assert config.tie_embeddings == hf.tie_word_embeddings
    assert config.qkv_bias == (model.model.layers[0].self_attn.q_proj.bias is not None)
    assert config.qk_norm == hasattr(model.model.layers[0].self_attn, "q_norm")
    np.testing.assert_allclose(np.asarray(rope_frequencies(config)), model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)


def test_logits_match_transformers(hf_model, imported):
    _, model, _ = hf_model
    config, params = imported
    ours = np.asarray(forward(config, params, TOKENS))
    ref = _torch_logits(model, TOKENS)
    assert np.abs(ref).max() > 1.0  # the comparison is not between two near-zero tensors
    np.testing.assert_array_less(np.abs(ours - ref).max(), TOL)


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 1, 8)])
def test_sharded_load_matches_transformers(hf_model, mesh_shape):
    _, model, path = hf_model
    with open(os.path.join(path, "config.json")) as f:
        config = config_from_hf(json.load(f))
    # The (1, 1, 8) case also reads straight into the scanned (stacked) layout.
    overrides = {"scan_layers": mesh_shape == (1, 1, 8)}
    config = config.replace(**overrides)
    mesh = make_mesh(mesh_shape)
    shardings = param_shardings(config, mesh)
    config, params = load_hf_checkpoint(path, shardings=shardings, overrides=overrides)
    jax.tree.map(lambda x, s: _assert_sharding(x, s), params, shardings)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
    ours = np.asarray(forward(config, params, TOKENS))
    np.testing.assert_array_less(np.abs(ours - _torch_logits(model, TOKENS)).max(), TOL)


def _assert_sharding(x, sharding):
    assert x.sharding == sharding


def test_sharded_index_checkpoint(hf_model, imported, tmp_path):
    _, model, _ = hf_model
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config, params = load_hf_checkpoint(tmp_path)
    assert config == imported[0]
    jax.tree.map(np.testing.assert_array_equal, params, imported[1])


def _left_pad(rows: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(rows), length), np.int64)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        tokens[i, length - len(row) :] = row
        mask[i, length - len(row) :] = True
    return tokens, mask


def test_left_padding_matches_unpadded_runs(hf_model, imported):
    _, model, _ = hf_model
    config, params = imported
    # Same [2, 24] shape as TOKENS, so the jitted forward is reused; row 0 is unpadded, row 1 padded.
    short = TOKENS[1, :9]
    tokens, mask = _left_pad([TOKENS[0], short], 24)
    padded = np.asarray(forward(config, params, tokens, attention_mask=mask))
    np.testing.assert_allclose(padded[0], np.asarray(forward(config, params, TOKENS))[0], atol=1e-5, rtol=0)
    alone = np.asarray(forward(config, params, short[None]))[0]
    np.testing.assert_allclose(padded[1, 24 - 9 :], alone, atol=1e-5, rtol=0)
    np.testing.assert_array_less(np.abs(alone - _torch_logits(model, short[None])[0]).max(), TOL)
    # transformers on the same left-padded batch agrees at the real positions.
    ref = _torch_logits(model, tokens, mask)
    np.testing.assert_array_less(np.abs(padded[mask] - ref[mask]).max(), TOL)


def test_kv_cache_decoding_matches_full_forward(imported):
    config, params = imported
    tokens, mask = _left_pad([TOKENS[0], TOKENS[1, :13]], 24)
    full = np.asarray(forward(config, params, tokens, attention_mask=mask))

    @functools.partial(jax.jit, donate_argnums=3)
    def step(params, tokens, mask, cache):
        return apply_model(config, params, tokens, attention_mask=mask, cache=cache)

    prefill = 12
    cache = init_cache(config, batch_size=2, max_length=24)
    logits, cache = step(params, jnp.asarray(tokens[:, :prefill]), jnp.asarray(mask[:, :prefill]), cache)
    pieces = [np.asarray(logits)]
    for t in range(prefill, 24):
        logits, cache = step(params, jnp.asarray(tokens[:, t : t + 1]), jnp.ones((2, 1), bool), cache)
        pieces.append(np.asarray(logits))
    incremental = np.concatenate(pieces, axis=1)
    assert int(cache["index"]) == 24
    np.testing.assert_array_equal(np.asarray(cache["mask"]), mask)
    np.testing.assert_allclose(incremental[mask], full[mask], atol=1e-5, rtol=0)


def test_export_round_trip(hf_model, imported, tmp_path):
    family, model, _ = hf_model
    config, params = imported
    # Sharded export for one family exercises the index; the scan layout exercises unstacking.
    max_shard = 40_000 if family == "llama" else 10**9
    if family == "qwen3":
        config, params = config.replace(scan_layers=True), stack_layers(params, config)
    files = save_hf_checkpoint(config, params, tmp_path, max_shard_bytes=max_shard)
    assert (len(files) > 1) == (family == "llama")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert exported.config.architectures == model.config.architectures
    np.testing.assert_array_less(np.abs(_torch_logits(exported, TOKENS) - _torch_logits(model, TOKENS)).max(), TOL)
    # Re-exporting over the directory as a single file drops the stale shards and index.
    save_hf_checkpoint(config, params, tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert not any(name.startswith("model-") for name in os.listdir(tmp_path))
    config2, params2 = load_hf_checkpoint(tmp_path, overrides={"scan_layers": config.scan_layers})
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_import_to_orbax(hf_model, imported, tmp_path):
    _, _, path = hf_model
    config = import_hf_to_orbax(path, tmp_path / "orbax")
    assert config == imported[0]
    restored_config, params = restore_params(tmp_path / "orbax")
    assert restored_config == config
    jax.tree.map(np.testing.assert_array_equal, params, imported[1])


def test_legacy_rope_scaling_config_is_read():
    current = _hf_config("llama").to_dict() | {"architectures": ["LlamaForCausalLM"]}
    legacy = dict(current)
    rope = dict(legacy.pop("rope_parameters"))
    legacy["rope_theta"] = rope.pop("rope_theta")
    legacy["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}  # transformers-4 spelling
    config = config_from_hf(current)
    assert config_from_hf(legacy) == config
    assert config.rope_theta == 10000.0
    assert dict(config.rope_scaling) == {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64.0,
    }


def test_bfloat16(hf_model, imported, tmp_path):
    _, model, path = hf_model
    config, params = load_hf_checkpoint(path, dtype="bfloat16")
    assert config.param_dtype == config.dtype == "bfloat16"
    expected = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), imported[1])
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    # A bfloat16 checkpoint read as float32 holds exactly the bfloat16 values.
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path)
    _, params32 = load_hf_checkpoint(tmp_path)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b, np.float32)), params32, expected)


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def llama_dir(tmp_path):
    model = AutoModelForCausalLM.from_config(_hf_config("llama"))
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    return tmp_path


def _rewrite(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_shard_is_named(llama_dir):
    directory = llama_dir / "sharded"
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    os.remove(directory / victim)
    with pytest.raises(HFCheckpointError, match=f"{victim}.*missing"):
        load_hf_checkpoint(directory)


def test_wrong_shape_names_tensor_and_shapes(llama_dir):
    file = llama_dir / "single" / "model.safetensors"
    name = "model.layers.1.mlp.up_proj.weight"

    def transpose(t):
        t[name] = np.ascontiguousarray(t[name].T)

    _rewrite(file, transpose)
    with pytest.raises(HFCheckpointError, match=rf"{name}.*shape \(64, 96\), expected \(96, 64\)"):
        load_hf_checkpoint(llama_dir / "single")


def test_missing_and_unexpected_tensors(llama_dir):
    file = llama_dir / "single" / "model.safetensors"
    original = load_file(file)

    _rewrite(file, lambda t: t.pop("model.layers.0.self_attn.k_proj.weight"))
    with pytest.raises(HFCheckpointError, match=r"missing.*model\.layers\.0\.self_attn\.k_proj\.weight"):
        load_hf_checkpoint(llama_dir / "single")

    save_file({**original, "model.layers.0.self_attn.extra.weight": np.zeros(3, np.float32)}, file)
    with pytest.raises(HFCheckpointError, match=r"model\.layers\.0\.self_attn\.extra\.weight"):
        load_hf_checkpoint(llama_dir / "single")

    # Rotary inverse frequencies are recomputed from the config, so they are ignored.
    save_file({**original, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}, file)
    load_hf_checkpoint(llama_dir / "single")


def test_tied_lm_head_is_verified(tmp_path):
    model = AutoModelForCausalLM.from_config(_hf_config("qwen2"))
    model.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    embed = load_file(file)["model.embed_tokens.weight"]
    _rewrite(file, lambda t: t.update({"lm_head.weight": embed.copy()}))
    load_hf_checkpoint(tmp_path)  # an explicit copy of a tied head is fine
    _rewrite(file, lambda t: t.update({"lm_head.weight": embed + 1.0}))
    with pytest.raises(HFCheckpointError, match="lm_head.weight.*differs"):
        load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["MistralForCausalLM"]}, r"config\.json.*MistralForCausalLM.*LlamaForCausalLM"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, r"config\.json.*'yarn'"),
        ({"attention_bias": True}, r"config\.json.*attention_bias.*o_proj"),
        ({"hidden_act": "gelu"}, r"config\.json.*gelu"),
    ],
)
def test_unsupported_config_is_named(llama_dir, change, message):
    file = llama_dir / "single" / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **change}))
    with pytest.raises(HFCheckpointError, match=message):
        load_hf_checkpoint(llama_dir / "single")


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(HFCheckpointError, match="config.json not found"):
        load_hf_checkpoint(tmp_path)
    hf = _hf_config("llama").to_dict() | {"architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(HFCheckpointError, match=r"neither model\.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_a_family_registered_in_one_module_loads_and_exports(tmp_path, monkeypatch):
    """A new family is one `Family(...)` (what a module under model/families/ holds): Mistral, the Llama block
    under its own config.json name, is refused above and, once registered, read at logit parity with
    transformers' MistralForCausalLM and exported as one that transformers loads back."""
    from transformers import MistralConfig

    from memtrain_jax.model.families import base

    monkeypatch.setattr(base, "_FAMILIES", dict(base._FAMILIES))  # the registration ends with the test
    base.register(
        base.Family(
            name="mistral",
            hf_architecture="MistralForCausalLM",
            gguf_architecture="mistral",
            gguf_permuted_qk=True,
            hf_extras=lambda config: {"sliding_window": None},
        )
    )
    hf_config = MistralConfig(**COMMON, head_dim=16, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    _randomize(model, seed=11)
    model.save_pretrained(tmp_path / "in")
    config, params = load_hf_checkpoint(tmp_path / "in")
    assert config.family == "mistral" and not config.qkv_bias and not config.qk_norm
    ref = _torch_logits(model, TOKENS)
    assert np.abs(ref).max() > 1.0
    np.testing.assert_array_less(np.abs(np.asarray(forward(config, params, TOKENS)) - ref).max(), TOL)
    save_hf_checkpoint(config, params, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert type(exported).__name__ == "MistralForCausalLM"
    np.testing.assert_array_less(np.abs(_torch_logits(exported, TOKENS) - ref).max(), TOL)
