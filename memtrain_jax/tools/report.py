"""Held-out tables of MemTrain runs: each figure with n and its 95 % interval, and paired differences.

Arms are evaluations of the same held-out episodes (`Trainer.evaluate`'s records, whose `items` hold each
episode's figures): the checkpoints of one run (before training, after the format warm-up, after GRPO) or the
final evaluations of several runs (`memtrain compare-runs`). Greedy accuracies carry Wilson intervals, R_E and
every avg@K figure (the mean of K sampled answers per episode) and the recall of a P-probe evaluation (the mean
of P greedy recall answers per episode) a bootstrap interval, and a difference of two
arms the paired bootstrap over episodes (memtrain_jax/stats).

Reads records only: nothing here loads a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memtrain_jax import stats
from memtrain_jax.config import UsageError, split_run_step

__all__ = ["arms_table", "binary_item", "eval_kind", "eval_suffix", "grpo_signal", "run_arm", "training_arms"]

Arm = tuple[str, Mapping[str, Any]]  # (column name, an evaluation record with "items")


def eval_kind(record: Mapping[str, Any]) -> tuple[int, float | None, int]:
    """(samples K, temperature, probes P) of an evaluation record (records written before P existed: P = 1)."""
    return int(record.get("samples", 1)), record.get("temperature"), int(record.get("probes", 1))


def eval_suffix(record: Mapping[str, Any]) -> str:
    """The file-name suffix of an evaluation's kind: "" greedy, "-kK" avg@K, "-pP" greedy with P probes."""
    samples, _, probes = eval_kind(record)
    return f"-k{samples}" if samples > 1 else f"-p{probes}" if probes > 1 else ""


def binary_item(key: str, record: Mapping[str, Any]) -> bool:
    """Whether each episode's `key` item is 0/1 (a Wilson interval): accuracies and found shares of a greedy
    evaluation, except the recall figures of a P-probe one (means of P answers)."""
    samples, _, probes = eval_kind(record)
    return samples == 1 and not (probes > 1 and "recall" in key)


def _rows(answer_extractor: str, imr: bool) -> list[tuple[str, str, bool]]:
    """(label, item key, binary) of the table's rows; recall rows only where the task has recall probes."""
    found = "answers boxed" if answer_extractor == "boxed" else f"answers found ({answer_extractor})"
    rows = [("E2E accuracy (final answer EM)", "acc_e2e", True), ("E2E reward R_E", "reward_e2e", False)]
    if imr:
        rows.append(("recall accuracy (R_I)", "acc_recall", True))
    rows.append((found, "answer_found", True))
    if imr:
        rows.append(("recall answers boxed", "recall_found", False))
    return rows


def _values(items: Sequence[Any] | None) -> list[float] | None:
    return None if items is None else [float("nan") if v is None else float(v) for v in items]


def arms_table(
    arms: Sequence[Arm],
    differences: Sequence[tuple[str, int, int]],
    *,
    answer_extractor: str = "boxed",
    imr: bool = True,
    notes: Sequence[str] = (),
) -> str:
    """A table with one column per arm (mean [95 % interval]) and one per difference (label, a, b): the paired
    mean of arm b - arm a over the episodes both evaluated, with its paired-bootstrap interval. Arms must hold
    the same episodes in the same order (`items["episode_id"]`), else a UsageError names the two arms.

    `notes` (e.g. `grpo_signal`) come after the rows. The last line names the differences whose interval
    excludes 0, or says that none does and how large a difference must be to show at this n: greedy, z / sqrt(n)
    (the half-width of a paired 0/1 difference at its widest); avg@K, whose items are means of K samples, the
    widest half-width of the paired intervals in the table.
    """
    ids = [tuple(a[1].get("items", {}).get("episode_id", ())) for a in arms]
    for (name, _), episodes in zip(arms[1:], ids[1:], strict=True):
        if episodes != ids[0]:
            raise UsageError(
                f"arms {arms[0][0]!r} and {name!r} were evaluated on other held-out episodes "
                f"({len(ids[0])} and {len(episodes)} episodes, not the same ids): compare runs of the same data "
                "config, seed and train.eval_episodes."
            )
    kinds = {eval_kind(a[1]) for a in arms}
    if len(kinds) > 1:
        raise UsageError(
            f"the arms were evaluated differently (samples per episode, temperature, probes per episode: "
            f"{sorted(kinds, key=str)}): compare evaluations of the same kind (train.eval_samples / "
            "train.eval_probes, `memtrain eval --samples / --probes`)."
        )
    samples, temperature, probes = kinds.pop() if kinds else (1, None, 1)
    kind = "greedy" if samples == 1 else f"avg@{samples}, T {temperature:g}"
    kind += f", {probes} probes an episode" if probes > 1 else ""
    record = {"samples": samples, "probes": probes}
    n = len(ids[0]) if arms else 0
    width = 22
    header = f"{f'held-out, {kind} (95% intervals)':34s} " + " ".join(f"{name:>{width}s}" for name, _ in arms)
    header += "".join(f" {label:>{width + 4}s}" for label, _, _ in differences)
    lines = [header]
    moved: list[str] = []
    widest = 0.0  # the largest half-width of a paired interval in the table
    for label, key, binary in _rows(answer_extractor, imr):
        columns = [_values(record.get("items", {}).get(key)) for _, record in arms]
        cells = []
        for values in columns:
            if values is None:
                cells.append(f"{'-':>{width}s}")
                continue
            # a mean over samples is not 0/1: its interval is the bootstrap's
            mean, lo, hi, _ = stats.mean_with_interval(values, binary=binary and binary_item(key, record))
            cells.append(f"{stats.format_interval(mean, lo, hi):>{width}s}")
        for diff_label, a, b in differences:
            if columns[a] is None or columns[b] is None:
                cells.append(f"{'-':>{width + 4}s}")
                continue
            diff = stats.paired_difference(columns[a], columns[b])
            cells.append(f"{stats.format_interval(*diff):>{width + 4}s}")
            widest = max(widest, (diff[2] - diff[1]) / 2)
            if diff[1] > 0 or diff[2] < 0:
                moved.append(f"{label} ({diff_label})")
        lines.append(f"{label:34s} " + " ".join(cells))
    lines += notes
    if not differences:
        lines.append(f"n = {n} held-out episodes")
    elif moved:
        lines.append(f"n = {n} held-out episodes; paired difference outside 0: {'; '.join(moved)}")
    elif samples == 1 and probes == 1:
        lines.append(
            f"n = {n} held-out episodes: no paired difference excludes 0 (at this n a difference must exceed about "
            f"{stats.Z95 / max(n, 1) ** 0.5:.2f} to show)"
        )
    else:
        lines.append(
            f"n = {n} held-out episodes: no paired difference excludes 0 (the widest paired interval here is "
            f"+/-{widest:.3f})"
        )
    return "\n".join(lines)


def grpo_signal(records: Sequence[Mapping[str, Any]]) -> str | None:
    """One line on how much learning signal the GRPO steps of a run's metrics had (None without GRPO steps):
    steps that updated, and the share of E2E and recall groups the DAPO filter dropped because all their
    rewards were equal (a group with equal rewards has zero advantages: it teaches nothing)."""
    grpo = [r for r in records if r.get("phase") == "grpo"]
    if not grpo:
        return None
    updated = sum(not r.get("skipped_update", 0) for r in grpo)

    def dropped(kind: str) -> str:
        total = sum(int(r.get(f"groups_{kind}") or 0) for r in grpo)
        # all rewards equal, dropped by DAPO or not (runs written before the count: the DAPO drops)
        gone = sum(int(r.get(f"groups_{kind}_uniform", r.get(f"groups_{kind}_dropped")) or 0) for r in grpo)
        return f"{gone}/{total} {kind} groups" if total else f"no {kind} groups"

    rewards = [float(r["reward_e2e"]) for r in grpo if r.get("reward_e2e") is not None]
    mean = f", mean training R_E {sum(rewards) / len(rewards):.3f}" if rewards else ""
    return (
        f"GRPO signal: {updated} of {len(grpo)} GRPO steps updated; equal rewards (no advantage) in "
        f"{dropped('e2e')} and {dropped('recall')}{mean}"
    )


def training_arms(summary: Mapping[str, Any], format_steps: int) -> tuple[list[Arm], list[tuple[str, int, int]]]:
    """The arms of one run's closing table: before training (when evaluated), after the format warm-up (when the
    run has one) and after; GRPO's own effect is after - warm-up on the same episodes, since the run up to the
    warm-up's end is, by determinism, the warm-up-only control arm."""
    arms: list[Arm] = [("before", summary["before"])] if summary.get("before") else []
    if format_steps and summary.get("warmup"):
        arms.append((f"warm-up (step {format_steps})", summary["warmup"]))
        arms.append(("after GRPO", summary["after"]))
        grpo = [("GRPO: after - warm-up", len(arms) - 2, len(arms) - 1)]
        return arms, ([("warm-up - before", 0, 1)] if len(arms) == 3 else []) + grpo
    arms.append(("after", summary["after"]))
    return arms, [("after - before (paired)", 0, 1)] if len(arms) == 2 else []


def run_arm(spec: str) -> tuple[Arm, Mapping[str, Any]]:
    """`name=WORKDIR[@STEP]` (or `WORKDIR[@STEP]`) -> ((name@step, the evaluation record of STEP, default the run's
    last), the run's stored config); `name=WORKDIR/eval-STEP[-kK].json` reads an evaluation `memtrain eval` wrote.
    Refused in one line when the run or the step's evaluation is missing."""
    import json

    from etils import epath

    from memtrain_jax.train.metrics import EVAL_FILE, read_metrics
    from memtrain_jax.train.workdir import CONFIG_FILE

    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = "", spec
    if rest.endswith(".json"):  # an evaluation written by `memtrain eval` (e.g. eval-60-k4.json) in its workdir
        path = epath.Path(rest)
        if not path.exists():
            raise UsageError(f"run {spec!r}: {path} not found (write it with `memtrain eval --workdir RUN`).")
        record = json.loads(path.read_text(encoding="utf-8"))
        config_path = path.parent / CONFIG_FILE
        if not config_path.exists() or not record.get("items"):
            raise UsageError(f"run {spec!r}: not an evaluation of a memtrain workdir (no {CONFIG_FILE} or items).")
        name = name or path.parent.name
        return (f"{name}@{record['step']}", record), json.loads(config_path.read_text(encoding="utf-8"))
    workdir, step = split_run_step(rest)
    name = name or workdir.rstrip("/").rsplit("/", 1)[-1]
    config_path = epath.Path(workdir) / CONFIG_FILE  # a local folder or gs://, as every workdir reader
    if not config_path.exists():
        raise UsageError(f"run {spec!r}: {config_path} not found (not a memtrain workdir; train it first).")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    records = [r for r in read_metrics(workdir, EVAL_FILE) if r.get("items")]
    if not records:
        raise UsageError(f"run {spec!r}: {workdir} has no held-out evaluation with per-episode items.")
    if step is not None:
        found = [r for r in records if r["step"] == step]
        if not found:
            steps = ", ".join(str(r["step"]) for r in records)
            raise UsageError(f"run {spec!r}: no evaluation at step {step}; {workdir} evaluated steps {steps}.")
        record = found[-1]
    else:
        record = records[-1]
    return (f"{name}@{record['step']}", record), config
