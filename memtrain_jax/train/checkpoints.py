"""Run checkpoints: one Orbax CheckpointManager per workdir, holding everything a resume needs.

    <workdir>/checkpoints/<step>/state   params, optimizer state, step, KL reference (Orbax, sharded)
                                 /meta    JSON: phase, the Grain iterator's position (`data_state`), hosts
    <workdir>/run.json                    what this workdir trains (model config, tokenizer, seed)

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it when
complete); the latest `max_to_keep` are kept, and every step of `keep_steps` (the format warm-up's last
step, when it falls on `checkpoint_every`: the warm-up-only control arm, which a GRPO variant can start from
with `init_from=RUN@STEP`) is never deleted. On restart the latest checkpoint is restored; one that cannot be
read is moved aside to `<step>.corrupt` (never deleted) with a warning, and the one before it is used. A
workdir written for another model or tokenizer is refused before any compute, so a checkpoint is never
overwritten by an unrelated run.

Multi-host: every process calls save/restore (Orbax writes each array's shards from the process
that holds them; JSON from process 0). The data position is the same on every host (it counts
global batches, see data.stream), so one copy in `meta` resumes any host count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from memtrain_jax.checkpoint.orbax_io import CHECKPOINT_DIR
from memtrain_jax.config import MODEL_RUN_CHOICES, UsageError, flatten
from memtrain_jax.data.stream import iterator_state, restore_iterator_state
from memtrain_jax.train.workdir import WorkdirMismatchError

RUN_FILE = "run.json"


def check_workdir(workdir: str, identity: dict[str, Any], *, write: bool = True) -> None:
    """Writes `run.json` with `identity` in a new workdir (when `write`); in an existing one, refuses a different
    identity, naming each differing field (run choices of the model, which older runs stored, are ignored)."""
    path = epath.Path(workdir) / RUN_FILE
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError as e:
            raise WorkdirMismatchError(f"{path} is not valid JSON ({e}); is {workdir} a memtrain workdir?") from None
        ignored = {f"model_config.{k}" for k in MODEL_RUN_CHOICES}
        a, b = flatten(stored), flatten(identity)
        differences = sorted(k for k in (set(a) | set(b)) - ignored if a.get(k) != b.get(k))
        if differences:
            detail = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differences[:4])
            more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
            raise WorkdirMismatchError(
                f"Workdir {workdir} holds a run of another model or setup ({detail}{more}). Use a new --workdir, or "
                "the config that wrote it; its checkpoints are left untouched."
            )
        return
    if write and jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))
        tmp.rename(path)


def stored_form(state: Any) -> Any:
    """The tree a checkpoint holds for `state`: the fields of a TrainState named in its STORED_WHEN_SET only where
    they are set, so checkpoints written before those fields existed restore unchanged; other trees as they are."""
    optional = getattr(type(state), "STORED_WHEN_SET", None)
    if optional is None:
        return state
    return {
        f.name: getattr(state, f.name)
        for f in dataclasses.fields(state)
        if not (f.name in optional and getattr(state, f.name) is None)
    }


def _restored(abstract_state: Any, stored: Any) -> Any:
    """`stored_form`'s inverse: the restored tree in `abstract_state`'s type."""
    return abstract_state.replace(**stored) if hasattr(type(abstract_state), "STORED_WHEN_SET") else stored


class RunCheckpointer:
    """Saves and restores (state, data iterator, meta) under `<workdir>/checkpoints`."""

    def __init__(
        self, workdir: str, *, max_to_keep: int = 3, keep_steps: tuple[int, ...] = (), asynchronous: bool = True
    ):
        # Orbax needs absolute paths; gs:// and other URLs are absolute already.
        root = workdir if "://" in workdir else os.path.abspath(workdir)
        self.directory = epath.Path(root) / CHECKPOINT_DIR
        policies = [ocp.checkpoint_managers.LatestN(max_to_keep)]
        if keep_steps:
            policies.append(ocp.checkpoint_managers.CustomSteps(sorted(keep_steps)))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        """Starts saving (asynchronously); `force` waits until it is on disk."""
        meta = {**meta, "data_state": iterator_state(iterator), "processes": jax.process_count()}
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(stored_form(state)), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        if force:
            self.manager.wait_until_finished()
        return saved

    def restore(self, abstract_state: Any, iterator: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of `step` or else the latest readable checkpoint, with `iterator` moved to its
        saved position; None when there is none. Unreadable checkpoints are moved aside with a warning."""
        candidates = [step] if step is not None else sorted(self.steps(), reverse=True)
        for s in candidates:
            if s not in self.steps():
                raise FileNotFoundError(f"No checkpoint of step {s} in {self.directory} (have {self.steps()}).")
            try:
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(stored_form(abstract_state)), meta=ocp.args.JsonRestore()
                    ),
                )
                restore_iterator_state(iterator, restored.meta["data_state"])
            except Exception as e:  # any failure means this checkpoint cannot be trusted
                if step is not None:
                    raise
                self._set_aside(s, e)
                continue
            return s, _restored(abstract_state, restored.state), dict(restored.meta)
        return None

    def restore_state(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """(step, state, meta) without the data iterator (evaluation and export): `step`, or else the latest
        readable checkpoint. A reader never moves a checkpoint: an unreadable one is named in a warning (with the
        `--step` to pass) and the one before it is used."""
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"No checkpoint in {self.directory}; train first (memtrain train --workdir ...).")
        if step is not None and step not in steps:
            raise FileNotFoundError(f"No checkpoint of step {step} in {self.directory} (have {steps}).")
        candidates = [step] if step is not None else sorted(steps, reverse=True)
        for s in candidates:
            try:
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(stored_form(abstract_state)), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # any failure means this checkpoint cannot be trusted
                if step is not None:
                    raise UsageError(
                        f"Checkpoint {self.directory / str(s)} cannot be restored ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); choose another --step of {steps}."
                    ) from None
                older = [t for t in steps if t < s]
                warnings.warn(
                    f"Checkpoint {self.directory / str(s)} cannot be restored ({type(e).__name__}); using "
                    + (f"step {older[-1]} (pass --step to choose)." if older else "none: no older checkpoint."),
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            return s, _restored(abstract_state, restored.state), dict(restored.meta)
        raise UsageError(f"No checkpoint in {self.directory} can be restored (tried steps {candidates}).")

    def _set_aside(self, step: int, error: Exception) -> None:
        path = self.directory / str(step)
        aside = self.directory / f"{step}.corrupt"
        warnings.warn(
            f"Checkpoint {path} cannot be restored ({type(error).__name__}: {str(error)[:300]}); moved it to "
            f"{aside} and falling back to the previous checkpoint.",
            RuntimeWarning,
            stacklevel=3,
        )
        if jax.process_index() == 0 and path.exists():
            if aside.exists():
                aside = self.directory / f"{step}.corrupt-{os.getpid()}"
            path.rename(aside)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
