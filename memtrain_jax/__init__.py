"""memtrain_jax: MemTrain, self-supervised training of an LLM agent's context memory, in JAX/Flax.

Stable public entry points (documented in the README):
  load_hf_checkpoint(path) -> (model_config, params)
  save_hf_checkpoint(model_config, params, path)
  forward(model_config, params, tokens) -> logits   # tokens: [batch, seq] int32 -> [batch, seq, vocab] float32
  token_logprobs(model_config, params, tokens, attention_mask=None) -> [batch, seq-1] float32
  generate(model_config, params, prompts, *, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
           stop_tokens=(), seed=0) -> list of GenerationResult(tokens, logprobs, stopped)
"""

from memtrain_jax.checkpoint.hf import load_hf_checkpoint, save_hf_checkpoint
from memtrain_jax.model import ModelConfig, forward, token_logprobs
from memtrain_jax.sampler import GenerationResult, generate

__all__ = [
    "GenerationResult",
    "ModelConfig",
    "forward",
    "generate",
    "load_hf_checkpoint",
    "save_hf_checkpoint",
    "token_logprobs",
]
__version__ = "0.1.0"
