"""Cloud TPU slices by name (v4-8, v5e-16, v5p-64, v6e-8, ...): chips, ICI topology and HBM per chip.

`topology_devices(name)` gives the slice's devices as the TPU compiler sees them, on any machine with
the `libtpu` wheel installed (`pip install 'memtrain_jax[tpu]'`): no TPU is needed to compile for one.
"""

from __future__ import annotations

import dataclasses
import os
import re

GiB = 1 << 30

# generation -> (topology prefix, TensorCores per chip in the accelerator name, HBM per chip, peak bf16 FLOP/s,
# ICI shapes by chip count, HBM bandwidth per chip in bytes/s; Cloud TPU's published figures). v4 and v5p names
# count TensorCores (2 per chip, one "megacore" device); v5e and v6e count chips.
_CUBE = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}  # chips -> 3-D torus
_PLANE = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}  # 2-D
GENERATIONS = {
    "v4": ("v4", 2, 32 * GiB, 275e12, _CUBE, 1228e9),
    "v5p": ("v5p", 2, 95 * GiB, 459e12, _CUBE, 2765e9),
    "v5e": ("v5e", 1, 16 * GiB, 197e12, _PLANE, 819e9),
    "v6e": ("v6e", 1, 32 * GiB, 918e12, _PLANE, 1640e9),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """One slice: `name` as gcloud spells it, its chip count, ICI topology and HBM per chip."""

    name: str
    generation: str
    chips: int
    topology: str  # e.g. "v5p:2x4x4", the compiler's name
    hbm_bytes: int
    peak_flops: float  # bf16 FLOP/s per chip
    hbm_bandwidth: float  # bytes/s per chip

    @property
    def megacore(self) -> bool:
        return self.generation in ("v4", "v5p")


def parse_slice(name: str) -> TpuSlice:
    """`v5p-64` -> TpuSlice(chips=32, topology "v5p:2x4x4", ...); an unknown name is refused listing the known."""
    match = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name.strip())
    if not match:
        raise ValueError(
            f"Unknown TPU slice {name!r}: give GENERATION-N with GENERATION one of v4, v5e (v5litepod), v5p, v6e, "
            "e.g. v4-8, v5e-16, v5p-64, v6e-8."
        )
    generation = ALIASES.get(match.group(1), match.group(1))
    prefix, per_chip, hbm, flops, shapes, bandwidth = GENERATIONS[generation]
    count = int(match.group(2))
    chips = count // per_chip
    if count % per_chip or chips not in shapes:
        known = ", ".join(f"{generation}-{c * per_chip}" for c in sorted(shapes))
        raise ValueError(f"No {generation} slice {name!r}; known: {known}.")
    return TpuSlice(name, generation, chips, f"{prefix}:{shapes[chips]}", hbm, flops, bandwidth)


def topology_devices(tpu: TpuSlice) -> list:
    """The slice's devices as the TPU compiler sees them (one per chip), from libtpu; no TPU needed."""
    # Compiling takes no chip: let several processes (a plan beside a test run) load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        kw = {}
        if tpu.megacore:  # one device per chip: both TensorCores as one (megacore)
            dims = [int(d) for d in tpu.topology.split(":")[1].split("x")]
            kw = {"chip_config_name": "megacore", "chips_per_host_bounds": (min(dims[0], 2), min(dims[1], 2), 1)}
        description = topologies.get_topology_desc(platform="tpu", topology_name=tpu.topology, **kw)
    except Exception as e:  # no libtpu: the compiler is not here
        raise RuntimeError(
            f"Cannot load the TPU compiler for {tpu.name} ({type(e).__name__}: {str(e)[:200]}). Install libtpu: "
            "pip install 'memtrain_jax[tpu]' (it runs on CPU machines), or use --estimate_only."
        ) from e
    devices = list(description.devices)
    if len(devices) != tpu.chips:
        raise RuntimeError(f"{tpu.topology} gave {len(devices)} devices, expected {tpu.chips} chips.")
    return devices
