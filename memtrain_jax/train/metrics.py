"""Metrics out of a run: one JSON object per step in `metrics.jsonl`, TensorBoard event files, text samples.

Only process 0 writes (every host computes the same global metrics). A resumed run appends to the
same files; records of steps after the restored checkpoint (written by the attempt that did not
finish them) are dropped first from all three files, so each step appears once (a restart from step 0
drops them all: the evaluation before training is written again). Each record is one whole line: a write
that fails (a full disk) is undone and stops the run with WriteFailedError naming the file and the errno;
a torn last line (a crash mid-write) is dropped with a warning naming the file. The workdir may be a URL
(gs://): files go through `etils.epath`, and since an object store cannot append, a record there rewrites its object.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

from memtrain_jax.config import UsageError
from memtrain_jax.train.workdir import WriteFailedError

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
        """Keeps the records of steps <= `step` (a run restarted from checkpoint `step` rewrites the later ones;
        from step 0, every one), and drops a torn last line."""
        if not path.exists():
            return
        text = path.read_text(encoding="utf-8")
        records = _parse(path, text)
        kept = [r for r in records if step > 0 and r.get("step", 0) <= step]
        if len(kept) != len(records) or not text.endswith("\n") and text.strip():
            tmp = path.parent / f".{path.name}.tmp"
            tmp.write_text("".join(_line(r) for r in kept), encoding="utf-8")
            tmp.replace(path)

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        line = _line({k: _clean(v) for k, v in record.items()})
        path = self.workdir / name
        if not self.appendable:
            path.write_text((path.read_text(encoding="utf-8") if path.exists() else "") + line, encoding="utf-8")
            return
        size = os.path.getsize(path) if path.exists() else 0
        try:
            with open(os.fspath(path), "a", encoding="utf-8") as f:  # a local file (URLs are rewritten above)
                f.write(line)
        except OSError as e:
            with contextlib.suppress(OSError):  # undo a partial line (else the reader drops a torn last line)
                os.truncate(path, size)
            raise WriteFailedError.of("the record", path, e) from e

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


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def _parse(path: epath.Path, text: str) -> list[dict[str, Any]]:
    """The records of a JSONL file's text; an unreadable last line (a write cut short) is dropped with a warning,
    an unreadable line before it is an error naming the file and the line."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise UsageError(
                    f"{path} line {i + 1} is not a JSON record: the file was edited or damaged; remove that line."
                ) from None
            warnings.warn(f"{path}: dropped a torn last line (a write was cut short).", RuntimeWarning, stacklevel=3)
    return records


def read_metrics(workdir: str, name: str = METRICS_FILE) -> list[dict[str, Any]]:
    """The records of a metrics file, in step order (a torn last line is dropped with a warning)."""
    path = epath.Path(workdir) / name
    if not path.exists():
        return []
    records = _parse(path, path.read_text(encoding="utf-8"))
    return sorted(records, key=lambda r: r.get("step", 0))
