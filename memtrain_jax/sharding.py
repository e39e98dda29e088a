"""Device mesh and logical-axis rules: the one place that maps names to devices.

Every parameter and activation in the model is annotated with *logical* axis names
(`batch`, `length`, `embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`,
`layers`, `cache_length`). The rules below map each logical name to zero or more
*mesh* axes (`data`, `fsdp`, `tensor`). Changing the parallelism of a run means
changing the mesh shape or the rules in the config, never the model code.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. `None` means replicated. Activations' batch is split
# over both data-parallel axes; weights are split over fsdp (embed) and tensor
# (heads / mlp / vocab), MaxText style.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
)


def make_mesh(shape: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh with automatic (rule-based) sharding axes.

    `shape` may hold one -1, filled from the device count; `None` puts every device
    on the data axis. Example: 8 devices, shape (2, 2, 2) or (-1, 1, 2).

    Devices are arranged by `mesh_utils` (on TPU, neighbouring chips of the ICI torus share the
    fsdp and tensor axes). On several slices (devices with distinct `slice_index`), the data axis
    spans the slices over DCN and every other axis stays inside a slice (a hybrid mesh), so only
    the data-parallel gradient reduction crosses slices.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape_for(shape, len(devices))
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        if shape[0] % slices:
            raise ValueError(
                f"Mesh shape {tuple(shape)} over {slices} slices: the data axis ({shape[0]}) must be a multiple of "
                "the slice count, since only data parallelism crosses slices."
            )
        per_slice = (shape[0] // slices, *shape[1:])
        device_array = mesh_utils.create_hybrid_device_mesh(
            per_slice, (slices, 1, 1), devices, allow_split_physical_axes=True
        )
    else:
        device_array = mesh_utils.create_device_mesh(tuple(shape), devices, allow_split_physical_axes=True)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_shape_for(shape: Sequence[int] | None, num_devices: int) -> list[int]:
    """`shape` (one -1 allowed, None = all on data) resolved for `num_devices`; a shape that does not fit is refused."""
    shape = list(shape) if shape is not None else [-1, 1, 1]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"Mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries for axes {MESH_AXES}.")
    if shape.count(-1) > 1:
        raise ValueError(f"Mesh shape {tuple(shape)} may contain at most one -1.")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"Cannot fill mesh shape {tuple(shape)} with {num_devices} devices.")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"Mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices but {num_devices} are available "
            "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)."
        )
    return shape


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
    """Normalises rules given in a config (lists of [name, axes]) to a tuple of pairs."""
    if rules is None:
        return DEFAULT_RULES
    normalised = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"Each logical-axis rule is (logical_name, mesh_axes); got {rule!r}.")
        name, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        for axis in axes if isinstance(axes, tuple) else (axes,):
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(f"Rule {rule!r} names mesh axis {axis!r}; mesh axes are {MESH_AXES}.")
        normalised.append((name, axes))
    return tuple(normalised)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules=DEFAULT_RULES) -> NamedSharding:
    """NamedSharding for one array annotated with logical axis names."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
    return NamedSharding(mesh, spec)


def _fit_spec(mesh: Mesh, spec: PartitionSpec, shape: Sequence[int]) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (e.g. a vocabulary of 50,257), replicating those."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        kept = []
        for name in names:
            size = int(np.prod([mesh.shape[a] for a in kept + [name]]))
            if dim % size == 0:
                kept.append(name)
        fitted.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return PartitionSpec(*fitted)


def tree_shardings(mesh: Mesh, logical_specs: Any, rules=DEFAULT_RULES, shapes: Any = None) -> Any:
    """Maps a pytree of logical PartitionSpecs (e.g. from `nn.get_partition_spec`) to NamedShardings.

    With `shapes` (a matching pytree of arrays or ShapeDtypeStructs), a mesh axis that does not
    divide a dimension is dropped for that dimension instead of failing at placement time.
    """
    shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
    if shapes is None:
        return shardings
    return jax.tree.map(
        lambda sharding, x: NamedSharding(mesh, _fit_spec(mesh, sharding.spec, x.shape)),
        shardings,
        shapes,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def shard_tree(tree: Any, shardings: Any) -> Any:
    """Places every leaf of `tree` on the device layout given by the matching sharding."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def batch_axes(mesh: Mesh, rules=DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the logical `batch` axis maps to under `rules` (e.g. ("data", "fsdp"))."""
    spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
    if spec is None:
        return ()
    return tuple(spec) if isinstance(spec, tuple) else (spec,)


def batch_axis_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many shards the batch is split into: a batch must be a multiple of this."""
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh, rules)]))


# --- host data <-> global arrays (multi-host) ----------------------------------------------------
# Every process runs the same Python on the same host values (the episodes of a step are gathered
# from all hosts first, see `gather_host_rows`), so a host value becomes a global array by each
# process placing its own shards, and a result is brought back by an explicit all-gather.


def to_global(tree: Any, shardings: Any) -> Any:
    """Host values (NumPy, the same on every process) -> global arrays laid out as `shardings`.

    Each process transfers only the shards its own devices hold; leaves that are already global
    arrays with that layout are kept. (`jax.jit` refuses NumPy arguments with non-replicated
    shardings when there are several processes; this is the placement it asks for.)
    """

    def place(x, s):
        if isinstance(x, jax.Array) and x.sharding == s:
            return x
        if isinstance(x, jax.Array) and (s.is_fully_addressable or not x.is_fully_addressable):
            return jax.device_put(x, s)  # a reshard within what this process can address
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = place(np.asarray(jax.random.key_data(x)), s)  # keys travel as their raw data
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(place, tree, shardings)


def to_host(x: Any) -> np.ndarray:
    """The whole value of an array on this host; an all-gather over processes when others hold shards."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def gather_host_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenates every process's rows of a host batch (dict of arrays, leading axis = rows), in
    process order, on every process; the batch itself with one process.

    The arrays travel as `.npy` bytes, so every dtype (int64 ids, strings) arrives exactly.
    """
    if jax.process_count() == 1:
        return batch
    buffer = io.BytesIO()
    np.savez(buffer, **batch)
    payload = np.frombuffer(buffer.getvalue(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([payload.size], np.int32), tiled=True)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    gathered = multihost_utils.process_allgather(padded[None], tiled=True)  # [processes, max size]
    parts = [
        np.load(io.BytesIO(row[:size].tobytes()), allow_pickle=False) for row, size in zip(gathered, sizes, strict=True)
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in batch}


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (e.g. a SIGTERM that reached one host of a pod)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag], np.int32))).any())
