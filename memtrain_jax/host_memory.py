"""Host memory for XLA:CPU: freed buffers stay in the process, so each step's temporaries reuse warm pages.

XLA:CPU allocates an execution's temporaries with malloc and frees them when it ends; a GRPO update of
SmolLM2-135M at 8 x 384 tokens holds several GiB of them. glibc's malloc serves blocks above 32 MiB with mmap
(and its per-thread arenas cannot hold them at all) and returns them with munmap, so every step maps fresh
memory that the kernel zero-fills page by page on first touch: about a million page faults a step, a sixth of
the update's CPU time in the kernel. `retain_freed_memory` sets glibc's malloc to one arena
(M_ARENA_MAX = 1), no mmap (M_MMAP_MAX = 0) and no trimming (M_TRIM_THRESHOLD = SIZE_MAX): freed blocks stay
in the heap and the next step reuses them. The price: the process keeps its peak resident size.

`memtrain` and the benchmarks call it first thing; `MEMTRAIN_MALLOC=default` turns it off. It must run
before the first computation (XLA's threads take their arenas then). Measured with benchmarks/bench_step.py
`--against` an older commit (README, "Host memory"); tests/test_host_memory.py checks the page faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "MEMTRAIN_MALLOC"  # "default": leave malloc alone


def retain_freed_memory(single_arena: bool = True) -> bool:
    """Keeps freed host memory in the process (glibc only); True when set, False when not applicable or
    turned off by MEMTRAIN_MALLOC=default. `single_arena=False` keeps glibc's per-thread arenas: for a process
    that only compiles (`memtrain plan`), where one arena serialises the compiler's threads (a llama-3.2-1b v4-8
    plan: 179 s with it, 66 s without, 91 s with glibc's defaults)."""
    if os.environ.get(ENV, "retain") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to set
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 is SIZE_MAX for the trim threshold (mallopt takes an int; glibc stores it as size_t): never trim.
    return all(
        mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
        if single_arena or param != _M_ARENA_MAX
    )
