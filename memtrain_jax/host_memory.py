"""Host memory for XLA:CPU: freed buffers stay in the process, so each step's temporaries reuse warm pages.

XLA:CPU allocates an execution's temporaries with malloc and frees them when it ends; a GRPO update of
SmolLM2-135M at 8 x 384 tokens holds several GiB of them. glibc's malloc serves blocks above 32 MiB with mmap
(and its per-thread arenas cannot hold them at all) and returns them with munmap, so every step maps fresh
memory that the kernel zero-fills page by page on first touch: about a million page faults a step, a sixth of
the update's CPU time in the kernel. `retain_freed_memory` sets glibc's malloc to one arena
(M_ARENA_MAX = 1), no mmap (M_MMAP_MAX = 0) and no trimming (M_TRIM_THRESHOLD = SIZE_MAX): freed blocks stay
in the heap and the next step reuses them. The price: the process keeps its peak resident size.

The peak is not the whole price: blocks of many sizes (a rollout's calls have many shapes) fragment the heap, and
freed pages in its holes stay resident, so a long evaluation of 128-row calls grew to the machine's 24 GiB
(killed by the OOM killer) where glibc's defaults peaked near 11 GiB. `release_if_above` bounds that: once the
resident size passes a share of the machine's memory, `malloc_trim(0)` hands the free pages back; the sampler
checks after every call (reading /proc/self/statm, microseconds), so runs that stay below never pay for it.

`memtrain` and the benchmarks call it first thing; `MEMTRAIN_MALLOC=default` turns it off. It must run
before the first computation (XLA's threads take their arenas then). Measured with benchmarks/bench_step.py
`--against` an older commit (README, "Host memory"); tests/test_host_memory.py checks the page faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "MEMTRAIN_MALLOC"  # "default": leave malloc alone


@functools.cache
def _glibc(name: str):
    """glibc's function `name` (ctypes), or None where the C library has none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def retain_freed_memory(single_arena: bool = True) -> bool:
    """Keeps freed host memory in the process (glibc only); True when set, False when not applicable or
    turned off by MEMTRAIN_MALLOC=default. `single_arena=False` keeps glibc's per-thread arenas: for a process
    that only compiles (`memtrain plan`), where one arena serialises the compiler's threads (a llama-3.2-1b v4-8
    plan: 179 s with it, 66 s without, 91 s with glibc's defaults)."""
    if os.environ.get(ENV, "retain") == "default" or not sys.platform.startswith("linux"):
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:  # not glibc (e.g. musl): nothing to set
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 is SIZE_MAX for the trim threshold (mallopt takes an int; glibc stores it as size_t): never trim.
    return all(
        mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
        if single_arena or param != _M_ARENA_MAX
    )


RELEASE_FRACTION = 0.75  # of the machine's memory (or the cgroup's limit) resident before free pages are released


@functools.cache
def _limit_bytes() -> int | None:
    """The memory this process may use: MemTotal, or a smaller cgroup v2 limit; None when unknown."""
    limits = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            limits += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            text = f.read().strip()
        if text.isdigit():
            limits.append(int(text))
    except OSError:
        pass
    return min(limits) if limits else None


def resident_bytes() -> int | None:
    """This process's resident set size (Linux), else None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_if_above(fraction: float = RELEASE_FRACTION) -> bool:
    """Returns the heap's free pages to the kernel (glibc's malloc_trim) when the resident size exceeds `fraction`
    of the memory limit; True when it did. A no-op elsewhere (no /proc, not glibc)."""
    rss, limit = resident_bytes(), _limit_bytes()
    if rss is None or limit is None or rss <= fraction * limit:
        return False
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    trim(0)
    return True
