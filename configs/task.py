"""Downstream task RL (post-training): the paper's comparison arms, through the same GRPO trainer as MemTrain.

`configs/task.py:VARIANT[,search]`: long-text QA (MemAgent's recipe) or, with `search`, search QA (MEM1's).
Start from the base model, or from a MemTrain run with `--config.init_from=WORKDIR`:

    memtrain train --config configs/task.py:cpu --workdir runs/task                      # task RL only
    memtrain train --config configs/task.py:cpu --config.init_from=runs/memtrain-cpu \\
        --workdir runs/memtrain+task                                                     # MemTrain + task RL
    memtrain compare --arms memtrain=runs/memtrain-cpu,task=runs/task,memtrain+task=runs/memtrain+task

Variants (the rest as configs/memtrain.py's variant of the same name):
- paper: MemAgent's settings: no recall probes, G = 8, lr 1e-6, 500 steps, 1,024-token memory and 5,120-token
  chunks, contexts of 200 documents (about 28K tokens, MemAgent's ~32K-token training set); exact match of the
  boxed answer as the reward. Set --config.qa.train_file to MemAgent's HotpotQA training file (HotpotQA JSON).
- cpu: the same on this CPU: SmolLM2-135M, the QA sets prepared from the shipped pool, 5-document contexts in
  256-token chunks (qa.overrides), a 64-token memory, G = 4, 2 questions a step, 8 steps.
- tiny: the tiny random model (tests).
With `search`: MEM1's loop (two questions per episode, at most 6 turns, top-3 BM25 passages of the pool).
"""

from __future__ import annotations

import ml_collections

from memtrain_jax.config import apply_overrides, flatten, load_config

VARIANTS = ("paper", "cpu", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, *options = (arg or "cpu").split(",")
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r} of configs/task.py; choose one of {VARIANTS}.")
    unknown = [o for o in options if o != "search"]
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} of configs/task.py; the only option is 'search'.")
    search = "search" in options
    paper, tiny = variant == "paper", variant == "tiny"
    c = load_config(f"memtrain.py:{variant}")
    c.task = "search_qa" if search else "long_qa"
    c.workdir = f"runs/task-{'search' if search else 'long'}-{variant}"
    c.agent.imr, c.agent.recall_weight = False, 0.0  # task RL has no recall probes
    c.agent.group_size = 8 if paper else 4 if not tiny else 2
    c.train.format_steps = 0
    c.train.steps = 500 if paper else 8 if not tiny else 2
    c.train.eval_every = 50 if paper else c.train.steps
    c.train.eval_episodes = 64 if paper else 8 if not tiny else 2
    c.optim.learning_rate = 1e-6 if paper else 1e-5 if not tiny else 1e-3
    c.optim.warmup_steps = 20 if paper else 0
    c.data.loader.batch_size = 32 if paper else 2
    # Task RL reads QA contexts, and scores answers, as the evaluation does.
    c = apply_overrides(c, flatten(c.qa.overrides))
    if tiny:
        c.qa.num_dev, c.qa.num_train, c.qa.train_num_docs = 8, 16, 3
        c.search.turn_tokens, c.search.information_tokens, c.search.max_turns = 12, 48, 3
    return c
