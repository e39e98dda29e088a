"""Host memory: with `retain_freed_memory`, a jitted program's large temporary reuses warm pages on every
later call instead of faulting in fresh ones (glibc on Linux; the test measures page faults in subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from memtrain_jax import host_memory
retained = host_memory.retain_freed_memory() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.tanh(x @ x.T) @ x).sum())  # a [4096, 4096] float32 temporary: 64 MiB
x = jnp.ones((4096, 256))
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    f(x).block_until_ready()
print(json.dumps({"retained": retained, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8}))
"""


def _faults_per_call(mode: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_memory_stops_the_page_faults_of_each_call():
    default, retained = _faults_per_call("default"), _faults_per_call("retain")
    assert retained["retained"] and not default["retained"]
    pages = 4096 * 4096 * 4 // 4096  # the temporary's 4 KiB pages, faulted in on every call by default
    assert default["faults"] > 0.5 * pages
    assert retained["faults"] < 0.1 * pages


RELEASE = """
import ctypes, json
from memtrain_jax import host_memory
assert host_memory.retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)  # resident
guard = libc.malloc(64)  # the freed block is a hole below it, not the heap's top
libc.free(block)
held = host_memory.resident_bytes()
below = host_memory.release_if_above(1.0)  # never above the machine's whole memory: nothing released
after_below = host_memory.resident_bytes()
above = host_memory.release_if_above(0.0)
print(json.dumps({"held": held, "below": below, "after_below": after_below, "above": above,
                  "after": host_memory.resident_bytes(), "size": size}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_free_pages_are_released_only_above_the_threshold():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert not r["below"] and r["held"] - r["after_below"] < 0.1 * r["size"]  # retained: the freed block stays
    assert r["above"] and r["held"] - r["after"] > 0.9 * r["size"]  # released: its pages go back
