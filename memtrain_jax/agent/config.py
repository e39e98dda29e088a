"""The memory agent's settings, read from a training config, and the checks made before any compute."""

from __future__ import annotations

import dataclasses
from typing import Any

from memtrain_jax.config import section_values
from memtrain_jax.data.probes import PROBE_MODES
from memtrain_jax.rewards import EXTRACTORS
from memtrain_jax.rewards.columns import REWARDS, check_weights
from memtrain_jax.rl.advantages import ADVANTAGE_NORMALISATIONS
from memtrain_jax.rl.config import RLConfig

# Room for a probed chunk that re-encodes longer than `chunk_size` after masking (e.g. "[TARGET]"
# takes more tokens than the entity it replaces); a probe beyond it is dropped and counted.
RECALL_CHUNK_SLACK = 64


# AgentConfig fields filled from the sampling, rl and data sections (never set in `agent`).
_FROM_OTHER_SECTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "greedy_memory",
    "advantage_normalisation",
    "negative_weight",
    "dapo_filter",
    "chunk_size",
    "max_chunks",
    "probe_mode",
    "probe_shared",
    "probe_in_memory",
    "probe_extractor",
    "target_token",
    "mask_token",
    "max_occurrences",
    "probe_max_occurrences",
    "max_words",
)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything the rollout and credit assignment need (the paper's numbers are `configs/memtrain.py:paper`).

    group_size G1: rollouts per episode (the E2E group). recall_group_size G2: samples per recall probe.
    memory_tokens: the memory budget (a longer reply is cut and counted). answer_tokens / recall_tokens:
    reply budgets of the final answer and of a recall answer. imr: draw recall probes at all. recall_weight
    lambda: R_E = EM(final) + lambda * mean(R_I). rewards: further reward columns and their weights,
    ((name, weight), ...) of memtrain_jax.rewards.columns (R_E adds sum_c w_c * column_c).
    train_final_answer: the final answer turn is a training sequence (else only the memory updates carry
    the E2E advantage). train_memory_turns: the memory updates are training sequences (off with the final
    answer too: only the recall answers train, so the answerer learns on a fixed reader).
    """

    group_size: int = 8
    recall_group_size: int = 8
    memory_tokens: int = 1024
    answer_tokens: int = 1024
    recall_tokens: int = 1024
    imr: bool = True
    recall_weight: float = 0.5
    rewards: tuple[tuple[str, float], ...] = ()
    train_final_answer: bool = True
    train_memory_turns: bool = True
    answer_extractor: str = "boxed"
    boxed_last_chars: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy_memory: bool = False  # memory turns at T = 0: decoded once per episode, shared by its G1 trajectories
    advantage_normalisation: str = "none"
    negative_weight: float = 1.0
    dapo_filter: bool = True
    chunk_size: int = 5120
    max_chunks: int = 8
    probe_mode: str = "paper"
    probe_shared: bool = False
    probe_in_memory: bool = False
    probe_extractor: str = "rules"
    target_token: str = "[TARGET]"
    mask_token: str = "[MASK]"
    max_occurrences: int = 5
    probe_max_occurrences: int = 5
    max_words: int = 8

    def __post_init__(self):
        for name in (
            "group_size",
            "recall_group_size",
            "memory_tokens",
            "answer_tokens",
            "recall_tokens",
            "chunk_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"agent.{name} must be a positive int, got {value!r}.")
        if self.recall_weight < 0:
            raise ValueError(f"agent.recall_weight (lambda) must be >= 0, got {self.recall_weight}.")
        if self.answer_extractor not in EXTRACTORS:
            raise ValueError(f"agent.answer_extractor={self.answer_extractor!r}; choose one of {EXTRACTORS}.")
        if self.boxed_last_chars < 0:
            raise ValueError(f"agent.boxed_last_chars must be >= 0 (0 = whole reply), got {self.boxed_last_chars}.")
        if self.advantage_normalisation not in ADVANTAGE_NORMALISATIONS:
            raise ValueError(
                f"rl.advantage_normalisation={self.advantage_normalisation!r}; "
                f"choose one of {ADVANTAGE_NORMALISATIONS}."
            )
        if self.probe_max_occurrences < 2:
            raise ValueError(
                f"data.probes.max_occurrences={self.probe_max_occurrences}: a probed entity occurs fewer than this "
                "many times in its chunk, so it must be >= 2 (2: entities named once)."
            )
        if self.probe_mode not in PROBE_MODES:
            raise ValueError(f"data.probes.mode={self.probe_mode!r}; choose one of {PROBE_MODES}.")
        if self.probe_in_memory and self.probe_shared:
            raise ValueError(
                "data.probes.in_memory=True draws each trajectory's probe from what its own memory names, so the "
                "trajectories of an episode cannot share one (data.probes.shared=True): turn one of them off."
            )
        if self.probe_extractor == "links":
            raise ValueError(
                "data.probes.extractor='links' cannot find entities in chunk text (it needs link spans); "
                "set data.probes.extractor='rules' or 'spacy'."
            )
        if not (self.temperature >= 0 and 0 < self.top_p <= 1 and self.top_k >= 0):
            raise ValueError(
                f"sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {self.temperature}, "
                f"{self.top_p}, {self.top_k}."
            )
        if self.greedy_memory and self.train_memory_turns:
            raise ValueError(
                "sampling.greedy_memory=True needs agent.train_memory_turns=False (e.g. the recall_only ablation): "
                "trained memory turns are scored at sampling.temperature, so they must be sampled at it."
            )

    def check_trains(self) -> None:
        """Raises ValueError when a GRPO step would train no turn (rollout-only uses, e.g. QA evaluation, may)."""
        if not (self.train_memory_turns or self.train_final_answer or self.imr):
            raise ValueError(
                "Nothing would train: agent.train_memory_turns, agent.train_final_answer and agent.imr are all off; "
                "turn one of them on."
            )

    @classmethod
    def from_config(cls, config: Any) -> AgentConfig:
        """From a full training config: its `agent`, `sampling`, `rl` and `data` sections."""
        agent = section_values(cls, config.agent, "agent", exclude=_FROM_OTHER_SECTIONS)
        data, rl = config.data, RLConfig.from_config(config.rl)
        weights = dict(agent.pop("rewards", None) or {})
        check_weights(weights, REWARDS)  # a column passed in code (assign_credit's `functions`) is checked there
        return cls(
            **agent,
            rewards=tuple((str(k), float(v)) for k, v in weights.items()),
            temperature=float(config.sampling.temperature),
            top_p=float(config.sampling.top_p),
            top_k=int(config.sampling.top_k),
            greedy_memory=bool(config.sampling.get("greedy_memory", False)),
            advantage_normalisation=rl.advantage_normalisation,
            negative_weight=rl.negative_weight,
            dapo_filter=rl.dapo_filter,
            chunk_size=int(data.chunking.chunk_size),
            max_chunks=int(data.chunking.max_chunks),
            probe_mode=data.probes.mode,
            probe_shared=bool(data.probes.shared),
            probe_in_memory=bool(data.probes.in_memory),
            probe_extractor=data.probes.extractor or data.entities.extractor,
            target_token=data.probes.target_token,
            mask_token=data.document.mask_token,
            max_occurrences=int(data.entities.max_occurrences),
            probe_max_occurrences=int(data.probes.max_occurrences),
            max_words=int(data.entities.max_words),
        )

    def prompt_lengths(self, overhead: dict[str, int], problem_tokens: int, no_memory_tokens: int) -> dict[str, int]:
        """The longest prompt + reply of each kind, in tokens, from the templates' fixed `overhead`."""
        memory = max(self.memory_tokens, no_memory_tokens)
        return {
            "memory": overhead["memory"] + problem_tokens + memory + self.chunk_size + self.memory_tokens,
            "final": overhead["final"] + problem_tokens + memory + self.answer_tokens,
            "recall": overhead["recall"] + memory + self.chunk_size + RECALL_CHUNK_SLACK + self.recall_tokens,
        }

    def check_window(self, overhead: dict[str, int], problem_tokens: int, no_memory_tokens: int, window: int) -> None:
        """Raises ValueError when a turn (instruction + problem + memory + chunk + reply) exceeds `window`."""
        lengths = self.prompt_lengths(overhead, problem_tokens, no_memory_tokens)
        too_long = {k: v for k, v in lengths.items() if v > window}
        if too_long:
            raise ValueError(
                f"Agent turns do not fit the model's window of {window} positions: {too_long} tokens "
                f"(template overhead {overhead}, problem {problem_tokens}, memory budget {self.memory_tokens}, "
                f"chunk {self.chunk_size}, replies {self.memory_tokens}/{self.answer_tokens}/{self.recall_tokens}). "
                "Lower data.chunking.chunk_size or the agent's token budgets, or use a model with a longer window."
            )
