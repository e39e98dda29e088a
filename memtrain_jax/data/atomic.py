"""Directory writes that are all-or-nothing: a crash never leaves a half-written cache entry."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable


def write_directory_atomically(directory: str, write: Callable[[str], None]) -> None:
    """Runs `write(tmp)` in a temporary sibling folder, then renames it to `directory`.

    An existing `directory` is replaced only after `write` has succeeded.
    """
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        write(tmp)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
