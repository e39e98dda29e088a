"""The downstream commands of `memtrain`: eval-qa, eval-search and compare (see memtrain_jax/tools/main.py).

- eval-qa: long-text QA by context length (memtrain_jax/agent/qa.py): the memory agent and, with
  --baseline, the full-context reader, on the same questions; prints the table, writes
  DIR/results.json = {"num_docs": {"<n>": {em, sub_em, f1, questions, mean_tokens, ...}}, "readers": ...}
  (num_docs: the memory agent's figures), DIR/answers.jsonl and, with --plot, DIR/qa_accuracy.png.
- eval-search: search QA (memtrain_jax/agent/search.py) on the dev questions joined k at a time for each k of
  --objectives (MEM1's multi-objective episodes); prints EM per question with its interval and the episodes'
  action-format failures; writes DIR/search_results.json and, with --plot, DIR/search_accuracy.png.
- compare: the paper's Table 1: long-text QA (or, with a search config, search QA by objectives) of several
  arms (the config's base model, then each `name=WORKDIR` of --arms, restored from its latest checkpoint, or
  `name=WORKDIR@STEP`, from that step's) on the same questions and lengths, one row per arm, each arm minus the
  base paired on the same questions; writes DIR/compare.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from memtrain_jax.agent import SamplerPolicy, evaluate_search
from memtrain_jax.agent.qa import evaluate_long_qa, format_paired, format_table, format_times
from memtrain_jax.atomic import write_file_atomically
from memtrain_jax.checkpoint.orbax_io import checkpoint_steps, restore_run_params
from memtrain_jax.config import apply_overrides, flatten, split_run_step
from memtrain_jax.tasks import AgentSetup


def qa_config(
    config: ml_collections.ConfigDict,
    task: str,
    *,
    qa_file: str | None = None,
    num_docs: Sequence[int] | None = None,
    limit: int | None = None,
    baseline: bool = False,
) -> ml_collections.ConfigDict:
    """A copy of `config` set up for evaluating `task` ("long_qa" | "search_qa") with the command's flags."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.task = task
    if qa_file:
        config.qa.file = qa_file
    if num_docs:
        if any(int(n) < 1 for n in num_docs):
            raise ValueError(f"--num-docs must be positive numbers of documents, got {list(num_docs)}.")
        config.qa.num_docs = tuple(int(n) for n in num_docs)
    if limit is not None:
        config.qa.limit = int(limit)
    if baseline:
        config.qa.readers = ("memory_agent", "full_context")
    config.agent.imr = False  # no recall probes downstream
    return apply_overrides(config, {**flatten(config.qa.overrides), **flatten(config.qa.eval_overrides)})


def _eval_policy(setup: AgentSetup, params: Any) -> SamplerPolicy:
    """The evaluation's sampling: the config's after qa_config (qa.eval_overrides)."""
    agent = setup.agent
    return SamplerPolicy(
        setup.sampler,
        params,
        setup.chat.stop_tokens(setup.tokenizer),
        temperature=agent.temperature,
        top_p=agent.top_p,
    )


def _eval_agent(setup: AgentSetup):
    return dataclasses.replace(setup.agent, group_size=1, imr=False)


def _long_qa(setup: AgentSetup, params: Any, log=print) -> tuple[dict[str, Any], list]:
    qa = setup.config.qa
    return evaluate_long_qa(
        _eval_policy(setup, params),
        setup.qa.dev,
        setup.qa.distractors,
        [int(n) for n in qa.num_docs],
        setup.builder,
        setup.tokenizer,
        _eval_agent(setup),
        seed=int(setup.config.seed),
        batch_size=int(qa.batch_size),
        readers=tuple(qa.readers),
        window=setup.policy.model_config.max_position_embeddings,
        header=setup.config.data.document.header,
        log=log,
    )


@jax.jit
def _leaf_marks(params: Any) -> Any:
    """Per leaf: the wrapping uint32 sums of its bits and of its bits times their flat index (a cheap fingerprint)."""

    def mark(x: jax.Array) -> jax.Array:
        bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32).ravel(), jnp.uint32)
        return jnp.stack([bits.sum(), (bits * jnp.arange(1, bits.size + 1, dtype=jnp.uint32)).sum()])

    return jax.tree.map(mark, params)


def _fingerprint(params: Any) -> tuple[int, ...]:
    return tuple(int(v) for leaf in jax.tree.leaves(jax.device_get(_leaf_marks(params))) for v in leaf)


def _equal_trees(a: Any, b: Any) -> bool:
    """Whether two parameter trees (arrays on the same mesh) are bit-identical."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return bool(jnp.all(jnp.stack([jnp.array_equal(x, y) for x, y in pairs])))  # one host transfer, not one a leaf


def _write_json(path: str, value: Any) -> None:
    if jax.process_index() == 0:  # every process evaluates; process 0 writes
        write_file_atomically(path, json.dumps(value, indent=1))


def _write_jsonl(path: str, rows: Sequence[Any]) -> None:
    if jax.process_index() == 0:
        write_file_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))


def eval_qa(config: ml_collections.ConfigDict, workdir: str, *, plot: bool = False) -> dict[str, Any]:
    """`memtrain eval-qa`: builds, evaluates, prints and writes (module docstring); returns the results."""
    start = time.perf_counter()
    setup = AgentSetup.build(config)
    os.makedirs(workdir, exist_ok=True)
    table, answers = _long_qa(setup, setup.policy.params)
    tables = {reader: table[reader] for reader in setup.config.qa.readers}
    results = {
        "num_docs": table.get("memory_agent", {}),
        "readers": tables,
        "model": setup.policy.description,
        "questions": len(setup.qa.dev),
        "qa_file": setup.config.qa.file or "(prepared from the pool)",
        "seconds": time.perf_counter() - start,
    }
    _write_json(os.path.join(workdir, "results.json"), results)
    _write_jsonl(os.path.join(workdir, "answers.jsonl"), [dataclasses.asdict(a) for a in answers])
    for metric in ("sub_em", "em", "f1"):
        print("\n" + format_table(tables, metric))
        if len(tables) > 1:
            print(format_paired(tables, metric))
    print("\n" + format_times(tables))
    print(f"\n[eval-qa] {os.path.join(workdir, 'results.json')} ({results['seconds']:.0f}s in all)")
    if plot:
        from memtrain_jax.train.plots import plot_qa

        print(plot_qa(tables, os.path.join(workdir, "qa_accuracy.png")))
    return results


def _search(setup: AgentSetup, params: Any, objectives: Sequence[int], log=print) -> tuple[dict[str, Any], list]:
    return evaluate_search(
        _eval_policy(setup, params),
        setup.qa.dev_questions,
        objectives,
        setup.builder,
        setup.tokenizer,
        setup.qa.retriever,
        setup.qa.corpus,
        setup.search,
        seed=int(setup.config.seed),
        batch_size=int(setup.config.qa.batch_size),
        log=log,
    )


def _objectives(config: ml_collections.ConfigDict, objectives: Sequence[int] | None) -> list[int]:
    """--objectives (search QA's lengths: questions joined into one episode), default the config's."""
    values = [int(k) for k in objectives] if objectives else [int(config.qa.num_objectives)]
    if any(k < 1 for k in values):
        raise ValueError(f"--objectives must be positive numbers of questions an episode, got {values}.")
    return values


def _print_search(tables: dict[str, dict[str, Any]]) -> None:
    print("\n" + format_table(tables, "em", unit="objectives"))
    if len(tables) > 1:
        print(format_paired(tables, "em"))
    for name, table in tables.items():
        failures = ", ".join(
            f"{k}: malformed {c['malformed']:.2f} [{c['malformed_interval'][0]:.2f}, {c['malformed_interval'][1]:.2f}]"
            f", no answer {c['no_answer']:.2f}, turns {c['turns_mean']:.2f} ({c['episodes']} episodes)"
            for k, c in table.items()
        )
        print(f"{name}: {failures}")


def eval_search(
    config: ml_collections.ConfigDict, workdir: str, objectives: Sequence[int] | None = None, *, plot: bool = False
) -> dict[str, Any]:
    """`memtrain eval-search`: the dev questions joined k at a time for each k of `objectives` (default
    qa.num_objectives), one episode a joined question; prints the table and writes DIR/search_results.json =
    {"objectives": {"<k>": figures (agent.search.evaluate_search)}, "questions", "model", "seconds"} and
    DIR/search_answers.jsonl (each episode's reply, answer, golds and failure)."""
    objectives = _objectives(config, objectives)
    start = time.perf_counter()
    setup = AgentSetup.build(config)
    os.makedirs(workdir, exist_ok=True)
    table, answers = _search(setup, setup.policy.params, objectives)
    results = {
        "objectives": table,
        "questions": len(setup.qa.dev_questions),
        "model": setup.policy.description,
        "seconds": time.perf_counter() - start,
    }
    _write_json(os.path.join(workdir, "search_results.json"), results)
    _write_jsonl(os.path.join(workdir, "search_answers.jsonl"), answers)
    _print_search({"search agent": table})
    print(f"\n[eval-search] {os.path.join(workdir, 'search_results.json')} ({results['seconds']:.0f}s in all)")
    if plot:
        from memtrain_jax.train.plots import plot_qa

        print(plot_qa({"search agent": table}, os.path.join(workdir, "search_accuracy.png"), **_SEARCH_PLOT))
    return results


_SEARCH_PLOT = {"metrics": ("em",), "unit": "objectives (questions an episode)", "title": "Search QA accuracy"}


def parse_arms(text: str) -> list[tuple[str, str]]:
    """ "name=WORKDIR,name=WORKDIR@STEP" -> [(name, spec)]: an arm is a run's latest checkpoint or, with @STEP, the
    checkpoint of that step (e.g. a run's format warm-up, the step before its GRPO phase); names unique,
    workdirs and checkpoints existing."""
    arms = []
    for item in [a for a in (text or "").split(",") if a.strip()]:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ValueError(f"--arms takes name=WORKDIR or name=WORKDIR@STEP items separated by commas; got {item!r}.")
        path, step = split_run_step(spec.strip(), f"Arm {name!r}")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Arm {name!r}: workdir {path!r} does not exist (train it first).")
        steps = checkpoint_steps(path)
        if not steps:
            raise FileNotFoundError(f"Arm {name!r}: workdir {path!r} has no checkpoint (train it first).")
        if step is not None and step not in steps:
            raise FileNotFoundError(f"Arm {name!r}: {path!r} has no checkpoint of step {step} (it has {steps}).")
        arms.append((name.strip(), spec.strip()))
    names = [n for n, _ in arms]
    if len(set(names)) != len(names) or "base" in names:
        raise ValueError(f"--arms names must be unique and not 'base' (the config's model); got {names}.")
    return arms


def _arm_params(spec: str, abstract: Any) -> tuple[int, Any]:
    """(step, params) of an arm's WORKDIR or WORKDIR@STEP."""
    workdir, step = split_run_step(spec)
    return restore_run_params(workdir, abstract, step)


def compare(
    config: ml_collections.ConfigDict,
    workdir: str,
    arms: Sequence[tuple[str, str]],
    *,
    plot: bool = False,
    objectives: Sequence[int] | None = None,
) -> dict[str, Any]:
    """`memtrain compare`: every arm on the same questions and lengths, one table row per arm: long-text QA at
    qa.num_docs or, with a search config (task search_qa), search QA at `objectives` questions an episode."""
    search = config.task == "search_qa"
    objectives = _objectives(config, objectives) if search else None
    setup = AgentSetup.build(config)
    os.makedirs(workdir, exist_ok=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), setup.policy.params)
    rows: dict[str, Any] = {}
    steps: dict[str, int | None] = {"base": None}
    evaluated: list[tuple[str, str, Any]] = []  # (arm, workdir, fingerprint of its parameters)
    for name, path in [("base", ""), *arms]:
        params = setup.policy.params
        if path:
            steps[name], params = _arm_params(path, abstract)
        print(f"[compare] {name}: {path or setup.policy.description}" + (f" step {steps[name]}" if path else ""))
        mark = _fingerprint(params)
        load = lambda p: _arm_params(p, abstract)[1] if p else setup.policy.params  # noqa: E731
        same = next((n for n, p, m in evaluated if m == mark and _equal_trees(params, load(p))), None)
        if same is not None:  # the evaluation is deterministic in its seeds: the same parameters, the same answers
            print(f"[compare] {name}: the same parameters as {same}, bit for bit (e.g. no update changed them); "
                  f"its row is {same}'s, not evaluated again")  # fmt: skip
            rows[name] = rows[same]
            continue
        rows[name] = _search(setup, params, objectives)[0] if search else _long_qa(setup, params)[0]["memory_agent"]
        evaluated.append((name, path, mark))
    questions = len(setup.qa.dev_questions if search else setup.qa.dev)
    results = {"task": setup.config.task, "arms": rows, "workdirs": dict(arms), "steps": steps, "questions": questions}
    _write_json(os.path.join(workdir, "compare.json"), results)
    if search:
        _print_search(rows)
    for metric in () if search else ("sub_em", "em", "f1"):
        print("\n" + format_table(rows, metric))
        if len(rows) > 1:
            print(format_paired(rows, metric))
    print(f"\n[compare] {os.path.join(workdir, 'compare.json')}")
    if plot:
        from memtrain_jax.train.plots import plot_qa

        print(plot_qa(rows, os.path.join(workdir, "compare_accuracy.png"), **(_SEARCH_PLOT if search else {})))
    return results


__all__ = ["compare", "eval_qa", "eval_search", "parse_arms", "qa_config"]
