"""Plot a run's curves from its metrics files: rewards and accuracies (train and held-out), loss, KL.

python -m memtrain_jax.tools.plot --workdir runs/memtrain-cpu_long [--out curves.png] [--smooth 5]
"""

from __future__ import annotations

from absl import app, flags

from memtrain_jax.train.plots import plot_run

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (holds metrics.jsonl and eval.jsonl).")
_OUT = flags.DEFINE_string("out", "", "PNG file to write (default: <workdir>/curves.png).")
_SMOOTH = flags.DEFINE_integer("smooth", 5, "Moving-average window over training steps (1 = raw).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("Pass --workdir DIR (a training run's workdir).")
    print(plot_run(_WORKDIR.value, _OUT.value, _SMOOTH.value))


if __name__ == "__main__":
    app.run(main)
