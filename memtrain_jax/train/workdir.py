"""A run directory's integrity: one writer at a time, and a config history that every resume must agree with.

    <workdir>/lock                  held (an OS file lock) by the one process training in the workdir; holds its
                                    pid, host and start time. The OS releases it when that process dies, so a lock
                                    left by a killed run never blocks its resume. Readers (eval, plot, export)
                                    never take it.
    <workdir>/config.json           the config of the latest start (what `memtrain eval` and `export` read)
    <workdir>/config_history.jsonl  one record per start: time, host, checkpoints present, the config, and
                                    the fields it changed

A start in a workdir that already has checkpoints must use the config they were trained with
(`check_config`), except for run choices (`memtrain_jax.config.RUN_CHOICES`: attention backend, dtypes,
remat, train.steps, eval and checkpoint cadence, ...) or with `allow_changes` (`memtrain train
--allow_config_change`). The refusal names each differing field with its old and new value and comes
before any model is loaded.

Only process 0 of a multi-host run locks and writes. A gs:// workdir cannot be locked (an object store has no
locks): it is used unlocked, with a warning.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import warnings
from typing import Any

import jax
import ml_collections
from etils import epath

from memtrain_jax.checkpoint.orbax_io import checkpoint_steps
from memtrain_jax.config import RUN_CHOICES, UsageError, flatten, migrate

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


class WorkdirBusyError(UsageError):
    """Another live process is training in the workdir."""


class WorkdirMismatchError(UsageError):
    """The workdir holds the checkpoints of another model, tokenizer or run."""


class ConfigChangedError(WorkdirMismatchError):
    """A resume with settings that differ from the ones the run's checkpoints were trained with."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class WorkdirLock:
    """An exclusive OS lock (`fcntl.flock`) on `<workdir>/lock`, re-entrant within one process.

    `acquire()` refuses with WorkdirBusyError naming the holder (pid, host, start) when another process holds
    it. The lock belongs to the open file: it is released when the last holder in this process calls
    `release()`, or by the OS when the process ends however it ends (kill -9 included), so it is never stale.
    """

    # realpath -> [open lock file, holders in this process]: the danger is two processes, and a process may
    # build several Trainers on one workdir (tests, eval after train).
    _held: dict[str, list] = {}

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._key: str | None = None

    def acquire(self) -> WorkdirLock:
        import fcntl

        os.makedirs(self.workdir, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in WorkdirLock._held:
            WorkdirLock._held[key][1] += 1
            self._key = key
            return self
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (the open file is the lock)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip()
            f.close()
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']} (started {info['started']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise WorkdirBusyError(
                f"{self.workdir} is being trained by {who}; wait for it to finish, stop it, or use another --workdir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}) + "\n")
        f.flush()
        WorkdirLock._held[key] = [f, 1]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        entry = WorkdirLock._held[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()  # closing the file releases the OS lock
            del WorkdirLock._held[self._key]
        self._key = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_workdir(workdir: str) -> WorkdirLock | None:
    """The held lock of a local workdir on process 0; None on other processes and for URLs (gs://)."""
    if jax.process_index() != 0:
        return None
    if "://" in workdir:
        warnings.warn(
            f"{workdir} is an object store, which has no locks: make sure no other run writes there.", stacklevel=2
        )
        return None
    return WorkdirLock(workdir).acquire()


def has_checkpoints(workdir: str) -> bool:
    """Whether the workdir holds a finished checkpoint (a step folder), i.e. a start there is a resume."""
    return bool(checkpoint_steps(workdir))


def config_values(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """A config as plain JSON values (tuples as lists), the form config.json stores."""
    text = config.to_json_best_effort() if hasattr(config, "to_json_best_effort") else json.dumps(config)
    return json.loads(text)


def _is_run_choice(key: str) -> bool:
    return any(key == c or key.startswith(c + ".") for c in RUN_CHOICES)


def config_changes(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (stored value, new value)} of the fields that differ, run choices left out; the stored
    config is read under today's field names (memtrain_jax.config.migrate)."""
    a, b = migrate(flatten(stored)), flatten(new)
    missing = object()
    changes = {}
    for key in sorted(set(a) | set(b)):
        if _is_run_choice(key):
            continue
        old, now = a.get(key, missing), b.get(key, missing)
        if old != now:
            changes[key] = (None if old is missing else old, None if now is missing else now)
    return changes


def read_stored_config(workdir: str) -> dict[str, Any] | None:
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); is {workdir} a memtrain run directory?") from None


def check_config(workdir: str, config: ml_collections.ConfigDict, *, allow_changes: bool = False) -> dict:
    """The fields of `config` that differ from the run's stored config {key: (old, new)}, run choices included.

    Raises ConfigChangedError (call it before any model is loaded) when the workdir has checkpoints and a field
    other than a run choice differs, unless `allow_changes`.
    """
    new = config_values(config)
    stored = read_stored_config(workdir)
    if stored is None:
        return {}
    changes = config_changes(stored, new) if has_checkpoints(workdir) else {}
    if changes and not allow_changes:
        shown = "; ".join(f"{k}: {_short(old)} -> {_short(now)}" for k, (old, now) in list(changes.items())[:6])
        more = f" (and {len(changes) - 6} more)" if len(changes) > 6 else ""
        raise ConfigChangedError(
            f"{workdir} holds a run of another model or setup, trained with other settings: {shown}{more}. "
            "Resume with the run's settings, use a new "
            "--workdir, or pass --allow_config_change to record the change and go on."
        )
    a, b = migrate(flatten(stored)), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def record_start(workdir: str, config: ml_collections.ConfigDict, changes: dict) -> None:
    """Writes config.json (atomically) and appends this start to the history (process 0)."""
    if jax.process_index() != 0:
        return
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    steps = checkpoint_steps(workdir)
    new = config_values(config)
    record = {
        "time": _now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "checkpoints": steps,
        "changed": {k: [old, now] for k, (old, now) in changes.items()},
        "config": new,
    }
    history = root / HISTORY_FILE
    line = json.dumps(record, sort_keys=True) + "\n"
    if "://" in workdir:  # an object store cannot append: rewrite the object
        history.write_text((history.read_text() if history.exists() else "") + line)
    else:
        with open(os.fspath(history), "a", encoding="utf-8") as f:
            f.write(line)
    tmp = root / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(new, indent=1, sort_keys=True))
    tmp.replace(root / CONFIG_FILE)


def read_history(workdir: str) -> list[dict[str, Any]]:
    """The records of every start of the run, oldest first."""
    path = epath.Path(workdir) / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class WriteFailedError(RuntimeError):
    """A write into the run directory failed (e.g. a full disk): the run stops; what was written before stays
    readable (records are whole lines, checkpoints are published only when complete)."""

    @classmethod
    def of(cls, what: str, path: Any, error: BaseException) -> WriteFailedError:
        """`error` (an OSError, or an error wrapping one, e.g. from the checkpoint library) as one line."""
        cause: BaseException | None = error
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            reason = f"[Errno {cause.errno}] {os.strerror(cause.errno)}"
        else:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        return cls(f"cannot write {what} {path}: {reason}")
