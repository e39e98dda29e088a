"""The paper's recipe (configs/memtrain.py:paper) laid out for a TPU slice: `configs/pod.py:MODEL,SLICE`.

    memtrain plan  --config configs/pod.py:qwen3-4b,v5p-64            (checks it fits; --topology is taken
                                                                      from the config)
    launch/tpu_vm.sh run NAME ZONE -- --config configs/pod.py:qwen3-4b,v5p-64 --config.model.path=/ckpt/Qwen3-4B

MODEL is a configs/models.py preset (its shapes; a run loads the HuggingFace folder `model.path`); SLICE is
v4-N, v5e-N, v5p-N or v6e-N. The layout, by rule:
- every chip on the fsdp axis (mesh (1, chips, 1)): these models' parameters and AdamW state are what fills
  HBM, and FSDP divides them by the chip count; the batch is split the same way;
- bfloat16 compute, float32 parameter storage (updates of lr 1e-6 vanish in bfloat16), full
  rematerialisation; layers scanned: one layer's program compiled once (compiles several times faster),
  and decode writes the stacked KV cache in place through the scan's carry (its temporaries are those of
  unrolled layers or less; `--config.model.scan_layers=False` gives the unrolled layout);
- train.micro_batch_size = the chip count (one 8K-token sequence a chip per micro-batch);
- sampling.max_rows (the rollout micro-batch): the largest power of two (the sampler's row buckets) that keeps
  the largest turn's KV cache within KV_FRACTION of the chip's HBM, at least the chip count. The compiled plans
  show the decode's temporaries at one to two caches and the prefill's output (the prompts' cache) beside it,
  hence an eighth.
PAPER_PRESETS lists the (model, slice) pairs `memtrain plan` checks to fit (tests/test_plan.py).
"""

from __future__ import annotations

import ml_collections

from memtrain_jax.config import load_config
from memtrain_jax.plan.topology import parse_slice

KV_FRACTION = 0.125
PAPER_PRESETS = (
    ("llama-3.2-1b", "v4-8"),
    ("qwen2.5-3b", "v4-8"),
    ("qwen3-4b", "v5e-16"),
    ("llama-3.2-3b", "v5e-16"),
    ("qwen3-4b", "v6e-8"),
    ("qwen2.5-7b", "v6e-8"),
    ("qwen2.5-7b", "v5p-64"),
    ("llama-3.1-8b", "v5p-64"),
    ("qwen3-4b", "v5p-64"),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    model, _, name = (arg or "qwen3-4b,v5p-64").partition(",")
    if not name:
        raise ValueError(f"configs/pod.py takes MODEL,SLICE (e.g. qwen3-4b,v5p-64), got {arg!r}.")
    tpu = parse_slice(name)
    shapes = load_config(f"models.py:{model}")  # refuses an unknown preset, naming the known ones
    c = load_config("memtrain.py:paper")
    c.topology = tpu.name
    c.workdir = f"runs/memtrain-{model}-{tpu.name}"
    c.model.preset = model
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"
    c.model.scan_layers = True
    c.mesh_shape = (1, tpu.chips, 1)
    c.train.micro_batch_size = tpu.chips
    slots = c.data.chunking.chunk_size + 2 * c.agent.memory_tokens + 512  # a turn's prompt and reply, in tokens
    row_bytes = 2 * shapes.num_layers * shapes.num_kv_heads * shapes.head_dim * 2 * slots  # bfloat16 K and V
    rows = int(KV_FRACTION * tpu.hbm_bytes * tpu.chips // row_bytes)
    c.sampling.max_rows = max(2 ** max(rows.bit_length() - 1, 0), tpu.chips)
    return c
