"""Metrics out of a run: one JSON object per step in `metrics.jsonl`, TensorBoard event files, text samples.

Only process 0 writes (every host computes the same global metrics). A resumed run appends to the
same files; records of steps after the restored checkpoint (written by the attempt that did not
finish them) are dropped first, so each step appears once. The workdir may be a URL (gs://): files go
through `etils.epath`, and since an object store cannot append, a record there rewrites its object.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SAMPLES_FILE = "samples.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricWriter:
    """JSONL + TensorBoard writer for a workdir (a no-op on processes other than 0)."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.active = jax.process_index() == 0
        self.workdir = epath.Path(workdir)
        self.appendable = "://" not in workdir  # local files append; objects are rewritten
        self.tb = None
        if not self.active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, EVAL_FILE, SAMPLES_FILE):
            self._truncate_after(self.workdir / name, resume_step)
        from tensorboardX import SummaryWriter

        purge = resume_step + 1 if resume_step else None  # events after the checkpoint are rewritten
        self.tb = SummaryWriter(os.fspath(self.workdir / "tensorboard"), purge_step=purge)

    @staticmethod
    def _truncate_after(path: epath.Path, step: int) -> None:
        """Keeps the records of steps <= `step` (a run restarted from checkpoint `step` rewrites the later ones)."""
        if not path.exists():
            return
        lines = [line + "\n" for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            tmp = path.parent / f"{path.name}.tmp"
            tmp.write_text("".join(kept), encoding="utf-8")
            tmp.replace(path)

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=True) + "\n"
        path = self.workdir / name
        if self.appendable:
            with path.open("a", encoding="utf-8") as f:
                f.write(line)
        else:
            path.write_text((path.read_text(encoding="utf-8") if path.exists() else "") + line, encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "train") -> None:
        """One step's scalars: JSONL (train: metrics.jsonl, eval: eval.jsonl) and TensorBoard under `prefix/`."""
        if not self.active:
            return
        self._append(METRICS_FILE if prefix == "train" else EVAL_FILE, {"step": step, **metrics})
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.tb.add_scalar(f"{prefix}/{key}", value, step)
        self.tb.flush()

    def write_text(self, step: int, name: str, text: str) -> None:
        """A text sample (e.g. the memories of one episode): samples.jsonl and TensorBoard's text tab."""
        if not self.active:
            return
        self._append(SAMPLES_FILE, {"step": step, "name": name, "text": text})
        self.tb.add_text(name, f"```\n{text}\n```", step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(workdir: str, name: str = METRICS_FILE) -> list[dict[str, Any]]:
    """The records of a metrics file, in step order."""
    path = epath.Path(workdir) / name
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(records, key=lambda r: r.get("step", 0))
