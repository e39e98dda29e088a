"""Curves of a run as a PNG: rewards and accuracies (rollouts and held-out), loss, KL and entropy."""

from __future__ import annotations

import os

import numpy as np

from memtrain_jax.train.metrics import EVAL_FILE, METRICS_FILE, read_metrics


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points, strict=True)
    return np.asarray(steps), np.asarray(values, np.float64)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def eval_band(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, lo, hi): the Wilson 95 % interval of a held-out accuracy at each evaluation, from the per-episode
    items each record keeps (None when no record has them)."""
    from memtrain_jax import stats

    rows = []
    for r in records:
        items = (r.get("items") or {}).get(key)
        if items is not None:
            _, lo, hi, n = stats.mean_with_interval(items, binary=True)
            if n:
                rows.append((r["step"], lo, hi))
    if not rows:
        return None
    steps, lo, hi = (np.asarray(c, np.float64) for c in zip(*rows, strict=True))
    return steps, lo, hi


def plot_run(workdir: str, out: str = "", smooth: int = 5) -> str:
    """Writes the curves of `workdir` to a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in read_metrics(workdir, METRICS_FILE) if r.get("phase") == "grpo"]
    evaluation = read_metrics(workdir, EVAL_FILE)
    if not train and not evaluation:
        raise FileNotFoundError(f"No metrics in {workdir} ({METRICS_FILE}, {EVAL_FILE}); train first.")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for key, label in (
        ("reward_e2e", "E2E reward (R_E)"),
        ("acc_e2e", "E2E accuracy"),
        ("acc_recall", "recall accuracy"),
    ):
        steps, values = _series(train, key)
        if steps.size:
            axes[0].plot(steps, _smooth(values, smooth), label=f"{label}, rollouts (avg {smooth})")
    for key, label in (("acc_e2e", "E2E accuracy"), ("acc_recall", "recall accuracy")):
        steps, values = _series(evaluation, key)
        if steps.size:
            (line,) = axes[1].plot(steps, values, marker="o", label=f"{label}, held-out greedy")
            band = eval_band(evaluation, key)
            if band is not None:
                axes[1].fill_between(band[0], band[1], band[2], color=line.get_color(), alpha=0.15, linewidth=0)
    steps, values = _series(evaluation, "missing_box_answer")
    if steps.size:
        axes[1].plot(steps, 1 - values, marker="s", linestyle="--", label="boxed answers, held-out")
    for key in ("loss", "kl", "entropy"):
        steps, values = _series(train, key)
        if steps.size:
            axes[2].plot(steps, _smooth(values, smooth), label=key)
    titles = ("rollouts during training", "held-out evaluation (bands: Wilson 95 %)", "update")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(f"MemTrain run {os.path.basename(os.path.abspath(workdir))}")
    fig.tight_layout()
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def qa_band(table: dict[str, dict], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) of `metric`'s 95 % interval at each length of a score table (lengths in increasing order); None
    when a cell lacks it (results written before intervals were kept)."""
    lengths = sorted(table, key=int)
    if not all(f"{metric}_interval" in table[n] for n in lengths):
        return None
    lo, hi = zip(*(table[n][f"{metric}_interval"] for n in lengths), strict=True)
    return np.asarray(lo, np.float64), np.asarray(hi, np.float64)


def plot_qa(
    tables: dict[str, dict[str, dict]],
    out: str,
    metrics: tuple[str, ...] = ("sub_em", "em", "f1"),
    unit: str = "",
    title: str = "Long-text QA accuracy by context length",
) -> str:
    """Accuracy (`metrics`) against context length, one line per reader or arm with its 95 % interval band:
    long-text QA (`unit` ""): x = the cell's mean tokens (log scale), each point named by its documents; with a
    `unit` (search QA's "objectives"): x = the length itself in that unit, since an episode's tokens depend on how
    the agent behaves. tables: {name: {length: figures}} as memtrain_jax.agent.qa.score_table writes them.
    Returns `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, table in tables.items():
            lengths = sorted(table, key=int)
            xs = [int(n) if unit else table[n]["mean_tokens"] for n in lengths]
            (line,) = ax.plot(xs, [100 * table[n][metric] for n in lengths], marker="o", label=name)
            band = qa_band(table, metric)
            if band is not None:
                ax.fill_between(xs, 100 * band[0], 100 * band[1], color=line.get_color(), alpha=0.15, lw=0)
            if not unit:
                for x, n in zip(xs, lengths, strict=True):
                    ax.annotate(f"{n} docs", (x, 0), textcoords="offset points", xytext=(0, 4), fontsize=7, ha="center")
        if unit:
            ax.set_xticks(sorted({int(n) for table in tables.values() for n in table}))
            ax.set_xlabel(unit)
        else:
            ax.set_xscale("log")
            ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(f"{metric} x 100")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
