"""memtrain_jax: MemTrain, self-supervised training of an LLM agent's context memory, in JAX/Flax.

Stable public entry points (documented in the README):
  load_hf_checkpoint(path) -> (model_config, params)
  save_hf_checkpoint(model_config, params, path)
  forward(model_config, params, tokens) -> logits   # tokens: [batch, seq] int32 -> [batch, seq, vocab] float32
  token_logprobs(model_config, params, tokens, attention_mask=None) -> [batch, seq-1] float32
  generate(model_config, params, prompts, *, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
           stop_tokens=(), seed=0) -> list of GenerationResult(tokens, logprobs, stopped)
"""

# The API loads lazily (PEP 562): importing a submodule such as memtrain_jax.data.masking (Grain workers do)
# must not pull in Flax, the model and the sampler.
_API = {
    "load_hf_checkpoint": "memtrain_jax.checkpoint.hf",
    "save_hf_checkpoint": "memtrain_jax.checkpoint.hf",
    "ModelConfig": "memtrain_jax.model",
    "forward": "memtrain_jax.model",
    "token_logprobs": "memtrain_jax.model",
    "GenerationResult": "memtrain_jax.sampler",
    "generate": "memtrain_jax.sampler",
}
__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'memtrain_jax' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
