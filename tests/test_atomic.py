"""The one publishing and naming scheme of every cache (memtrain_jax/atomic.py)."""

from __future__ import annotations

import hashlib
import os
import pathlib

import pytest

from memtrain_jax.atomic import cache_entry, content_key, write_directory_atomically, write_file_atomically


def test_content_key_is_sha256_of_sorted_json_or_of_the_text():
    assert content_key({"b": 1, "a": [1, 2]}) == hashlib.sha256(b'{"a": [1, 2], "b": 1}').hexdigest()
    assert content_key({"a": [1, 2], "b": 1}) == content_key({"b": 1, "a": (1, 2)})  # key order, tuples: same key
    assert content_key({"a": 1}) != content_key({"a": 2})
    assert content_key("model.gguf|3|7") == hashlib.sha256(b"model.gguf|3|7").hexdigest()  # a str as it is
    assert content_key({"path": os.sep}) == content_key({"path": str(os.sep)})


def test_cache_entry_names_the_folder_by_the_first_16_digits(tmp_path):
    key = content_key({"pool": "abc"})
    assert cache_entry(tmp_path, "qa", key) == os.path.join(str(tmp_path), f"qa-{key[:16]}")


def test_a_failed_write_leaves_the_entry_as_it_was(tmp_path):
    entry = cache_entry(tmp_path, "index", content_key("x"))
    write_directory_atomically(entry, lambda tmp: pathlib.Path(tmp, "a.txt").write_text("first"))

    def fail(tmp: str) -> None:
        pathlib.Path(tmp, "a.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_directory_atomically(entry, fail)
    assert pathlib.Path(entry, "a.txt").read_text() == "first"
    assert os.listdir(tmp_path) == [os.path.basename(entry)]  # no temporary folder left behind
    # replace=False: an entry another process published first is kept.
    assert not write_directory_atomically(entry, lambda tmp: None, replace=False)
    assert pathlib.Path(entry, "a.txt").read_text() == "first"


def test_a_file_is_replaced_whole_and_a_failed_write_leaves_it_and_nothing_else(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_file_atomically(path, "old")
    write_file_atomically(path, "new")
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["results.json"]

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_file_atomically(path, "lost")
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["results.json"]
