"""All-or-nothing directory writes: the one publishing scheme of every cache and checkpoint folder.

A folder is written complete under a temporary sibling name, then renamed into place. Replacing an
existing folder moves it aside to `<name>.old-save` first and deletes it only after the new one is in
place; if a crash falls between the two renames, `resolve` finds the old folder aside, so a reader
never sees a half-written folder and a previous version is never lost. Paths may be local or URLs
that `etils.epath` understands (e.g. gs://; there a rename is a copy, so the guarantee is weaker).
Imported by the data caches, the GGUF cache and the parameter checkpoints alike.

Every cache is keyed the same way, by `content_key(inputs)`, and written once with `write_directory_atomically`;
the data caches name their folder `cache_entry(cache_dir, prefix, key)` (the GGUF cache keys a file by its path,
size and modification time, and names the folder after the file).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

from etils import epath

OLD_SUFFIX = ".old-save"


def _path(path: str | os.PathLike) -> epath.Path:
    return epath.Path(path if "://" in os.fspath(path) else os.path.abspath(os.fspath(path)))


def resolve(directory: str | os.PathLike) -> epath.Path:
    """`directory`, or its previous version when a replacement was interrupted between its two renames."""
    path = _path(directory)
    old = path.parent / f"{path.name}{OLD_SUFFIX}"
    return old if not path.exists() and old.exists() else path


def publish_directory(tmp: str | os.PathLike, directory: str | os.PathLike, *, replace: bool = True) -> bool:
    """Moves the complete folder `tmp` to `directory`; returns True when it was published.

    With `replace` False an existing `directory` wins (another process published the same content
    meanwhile): `tmp` is deleted and False is returned.
    """
    tmp, path = _path(tmp), _path(directory)
    old = path.parent / f"{path.name}{OLD_SUFFIX}"
    if path.exists() and not replace:
        tmp.rmtree()
        return False
    if old.exists():
        old.rmtree()
    if path.exists():
        path.rename(old)
    try:
        tmp.rename(path)
    except OSError:
        if not replace and path.exists():  # lost a race against another writer: theirs is complete
            tmp.rmtree()
            return False
        raise
    if old.exists():
        old.rmtree()
    return True


def write_directory_atomically(
    directory: str | os.PathLike, write: Callable[[str], None], *, replace: bool = True
) -> bool:
    """Runs `write(tmp)` in a fresh temporary sibling folder, then publishes it as `directory`.

    A failing `write` leaves `directory` as it was and removes the temporary folder.
    """
    path = _path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(os.fspath(tmp))
        return publish_directory(tmp, path, replace=replace)
    finally:
        if tmp.exists():
            tmp.rmtree()


def write_file_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to the local file `path` whole or not at all: written aside under a name of this process, then
    renamed over it, so a reader (or a crash) never sees half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: leave the old file and no aside copy behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def content_key(payload: Any) -> str:
    """sha256 hex digest of a cache's inputs: a str as it is, anything else as JSON with sorted keys (objects
    JSON lacks by their str()). Equal inputs give equal keys; any changed input gives a new one."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_entry(cache_dir: str | os.PathLike, prefix: str, key: str) -> str:
    """The folder of a cache entry: `cache_dir/<prefix>-<first 16 hex digits of key>`."""
    return os.path.join(os.fspath(cache_dir), f"{prefix}-{key[:16]}")
