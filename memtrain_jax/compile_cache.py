"""JAX's persistent compilation cache, on by default (`config.compilation_cache`, "" = off): a second process
with the same programs loads them from disk instead of compiling them again.

`enable(directory)` must run before the process compiles anything (JAX opens its cache on the first
compilation); `cache_stats()` counts this process's hits, misses and the compile seconds the hits saved, from
JAX's monitoring events.
"""

from __future__ import annotations

import os

import jax

_HITS, _MISSES = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"
# JAX's monitoring listeners are process-wide, so the counts are too (one listener, registered once).
_counts = {"hits": 0, "misses": 0, "saved_s": 0.0, "listening": False}


def _on_event(event: str, **_kw) -> None:
    if event == _HITS:
        _counts["hits"] += 1
    elif event == _MISSES:
        _counts["misses"] += 1


def _on_duration(event: str, seconds: float, **_kw) -> None:
    if event == _SAVED:
        _counts["saved_s"] += seconds


def enable(directory: str) -> bool:
    """Caches every compiled program (no size or compile-time threshold) under `directory`; False when off."""
    if not _counts["listening"]:
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _counts["listening"] = True
    if not directory:
        return False
    path = directory if "://" in directory else os.path.abspath(directory)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


def cache_stats() -> dict[str, float]:
    """{"hits", "misses", "saved_s"} of this process so far."""
    return {k: _counts[k] for k in ("hits", "misses", "saved_s")}


def describe() -> str:
    """One line for a run's closing summary."""
    s = cache_stats()
    if not s["hits"] and not s["misses"]:
        return "compilation cache: off or unused"
    return (
        f"compilation cache: {s['hits']} programs loaded, {s['misses']} compiled and stored "
        f"({s['saved_s']:.0f}s of compilation saved)"
    )
