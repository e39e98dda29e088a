"""Multi-process start-up: `jax.distributed.initialize` with arguments from flags or the environment.

On TPU VMs JAX finds the coordinator, process count and process id itself (launch/tpu_vm.sh passes
only `--distributed`). Elsewhere (CPU hosts, the two-process test, launch/local.sh) all three are
given, as flags or as MEMTRAIN_COORDINATOR / MEMTRAIN_NUM_PROCESSES / MEMTRAIN_PROCESS_ID; CPU
processes then exchange collectives over gloo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

ENV = {
    "coordinator_address": "MEMTRAIN_COORDINATOR",
    "num_processes": "MEMTRAIN_NUM_PROCESSES",
    "process_id": "MEMTRAIN_PROCESS_ID",
}


def distributed_args(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """The keyword arguments of `jax.distributed.initialize`: flags first, then the environment; {} (JAX's
    own detection, as on TPU VMs) when neither gives any. All three or none: a partial set is refused."""
    given = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    args = {k: v if v is not None else environ.get(ENV[k]) for k, v in given.items()}
    args = {k: v for k, v in args.items() if v not in (None, "")}
    if not args:
        return {}
    missing = [f"--{k.removesuffix('_address')} / {ENV[k]}" for k in ENV if k not in args]
    if missing:
        raise ValueError(
            f"Multi-process start-up got {sorted(args)} but not {missing}: give the coordinator (host:port of "
            "process 0), the process count and this process's id together, or none of them on TPU VMs."
        )
    try:
        args["num_processes"], args["process_id"] = int(args["num_processes"]), int(args["process_id"])
    except ValueError as e:
        raise ValueError(f"num_processes and process_id must be integers, got {args}.") from e
    if not 0 <= args["process_id"] < args["num_processes"]:
        raise ValueError(f"process_id={args['process_id']} must be in [0, num_processes={args['num_processes']}).")
    if ":" not in str(args["coordinator_address"]):
        raise ValueError(f"coordinator {args['coordinator_address']!r} must be host:port (process 0's address).")
    return args


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None):
    """Starts JAX's multi-process runtime (call before any other JAX work); returns the arguments used."""
    args = distributed_args(coordinator, num_processes, process_id)
    if args:
        # CPU processes need a collectives backend across processes; TPU and GPU bring their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
    return args
