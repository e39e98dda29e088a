"""`memtrain plan`: compile a run's real programs for a TPU slice, ahead of time, on this machine.

The train step (accumulate, apply, and the reference scoring when KL is on) and the rollout's prefill,
rows (each row's prompt cache) and decode at each turn's shapes are built exactly as a run builds them
(Learner, Sampler), lowered on abstract arguments laid out over a mesh of the slice's devices, and
compiled by the TPU compiler (libtpu; no TPU needed). Per chip, the compiler reports each program's
arguments, outputs, aliased (donated) bytes and temporaries, and its FLOPs as XLA's cost analysis counts
them (custom kernels such as splash attention are not counted, and a decode counts one step of its loop).
A program's peak adds what stays resident on the chip without being its argument (the optimizer state
and the KL reference through a rollout, say):

    peak = resident not passed + arguments + outputs - aliased + temporaries

and the plan fits when the largest peak is at most `HEADROOM` of the chip's HBM.

Shapes come from the config alone (no tokenizer or data): each prompt is its turn's budget (chunk,
memory, replies) plus `PROMPT_OVERHEAD` tokens for the template, problem and chat markup, rounded into
the sampler's buckets; a turn's rows are episodes x G1 (memory, answer) or x G1 x G2 (recall), at most
`sampling.max_rows` a call; the train step's micro-batch is `train.micro_batch_size` sequences of the
longest turn rounded up to `train.length_block`.

Attention: "auto" resolves by the platform of the mesh's devices (model.attention.target_platform), so
the plan compiles the kernel a run on the slice uses (splash, a Pallas/Mosaic TPU kernel).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from memtrain_jax import sharding
from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.checkpoint.policy import model_config_of
from memtrain_jax.model import ModelConfig
from memtrain_jax.plan import cost
from memtrain_jax.plan.estimate import MemoryEstimate, estimate
from memtrain_jax.plan.topology import GiB, TpuSlice, topology_devices
from memtrain_jax.sampler import Buckets, Sampler
from memtrain_jax.train.learner import Learner

PROMPT_OVERHEAD = 256  # tokens of template, problem and chat markup assumed in every prompt
HEADROOM = 0.94  # of HBM usable by the programs (the runtime and fragmentation take the rest)


@dataclasses.dataclass(frozen=True)
class RolloutCall:
    """One rollout turn's sampler call, bucketed: rows [B], distinct prompts [U] of `prompt` tokens, `new` steps."""

    kind: str
    rows: int
    distinct: int
    prompt: int
    new: int

    @property
    def slots(self) -> int:
        return self.prompt + self.new


@dataclasses.dataclass(frozen=True)
class RunShapes:
    calls: tuple[RolloutCall, ...]
    train_rows: int
    train_length: int
    window: int


def run_shapes(config: ml_collections.ConfigDict, batch_multiple: int, buckets: Buckets | None = None) -> RunShapes:
    """The shapes a run of `config` compiles (see the module docstring)."""
    bk = buckets or Buckets.from_config(config)
    agent = AgentConfig.from_config(config)
    episodes = int(config.data.loader.batch_size)
    lengths = agent.prompt_lengths(dict.fromkeys(("memory", "final", "recall"), PROMPT_OVERHEAD), 0, 0)
    turns = [
        ("memory", episodes * agent.group_size, episodes * agent.group_size, lengths["memory"], agent.memory_tokens),
        ("answer", episodes * agent.group_size, episodes * agent.group_size, lengths["final"], agent.answer_tokens),
    ]
    if agent.imr:
        rows = episodes * agent.group_size * agent.recall_group_size
        turns.append(("recall", rows, episodes * agent.group_size, lengths["recall"], agent.recall_tokens))
    max_rows = int(config.sampling.get("max_rows", 0))
    calls = []
    for kind, rows, distinct, total, new in turns:
        rows = min(rows, max_rows) if max_rows else rows
        distinct = min(distinct, rows)
        calls.append(
            RolloutCall(
                kind,
                bk.round_up(rows, bk.min_batch, batch_multiple),
                bk.round_up(distinct, bk.min_batch, batch_multiple),
                bk.round_length(total - new, bk.min_prompt_length),
                bk.round_up(new, bk.min_new_tokens),
            )
        )
    block = int(config.train.length_block)
    replies = max(agent.memory_tokens, agent.answer_tokens, agent.recall_tokens if agent.imr else 0)
    longest = max(v for k, v in lengths.items() if agent.imr or k != "recall")
    return RunShapes(
        tuple(calls), int(config.train.micro_batch_size), -(-longest // block) * block, -(-replies // 8) * 8
    )


@dataclasses.dataclass(frozen=True)
class ProgramStats:
    """One compiled program, per chip: the compiler's bytes and FLOPs, and the peak with what stays resident."""

    name: str
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    resident_outside: int
    flops: float
    error: str = ""  # the compiler refused the program (e.g. its temporaries exceed HBM)
    compile_s: float = 0.0  # lowering excluded; on this machine, for the target's compiler

    @property
    def peak(self) -> float:
        if self.error:
            return float("inf")
        return self.resident_outside + self.arguments + self.outputs - self.aliased + self.temporaries


def program_stats(name: str, compiled: Any, resident_outside: int, compile_s: float = 0.0) -> ProgramStats:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return ProgramStats(
        name,
        int(memory.argument_size_in_bytes),
        int(memory.output_size_in_bytes),
        int(memory.alias_size_in_bytes),
        int(memory.temp_size_in_bytes),
        resident_outside,
        float((cost or {}).get("flops", float("nan"))),
        compile_s=compile_s,
    )


def chip_bytes(tree: Any) -> int:
    """Bytes of device 0's shard of every leaf (ShapeDtypeStructs or arrays with shardings)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class ProgramTime:
    """One program's analytic cost per chip, how often a step runs it, and its roofline time."""

    name: str
    count: int
    tflop: float  # per chip, one run of the program
    gib: float  # HBM bytes per chip, one run
    seconds: float  # roofline, one run
    bound: str  # "compute" | "memory"


@dataclasses.dataclass(frozen=True)
class StepPrediction:
    """A GRPO step's predicted time on a slice from the analytic costs (memtrain_jax/plan/cost.py): each program
    at its roofline, run as often as a step runs it, with no overlap and no communication."""

    programs: tuple[ProgramTime, ...]
    step_seconds: float
    mfu: float  # model FLOPs of the update (padded positions counted) / (step time x chips x peak)
    run_hours: float  # train.steps steps

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def predict_step(
    config: ml_collections.ConfigDict, model: ModelConfig, shapes: RunShapes, mesh: dict[str, int],
    peak_flops: float, bandwidth: float,
) -> StepPrediction:  # fmt: skip
    """The step's programs (rollout turns, micro-batches of the update, the optimizer apply) at their rooflines."""
    agent = AgentConfig.from_config(config)
    chips, shards = math.prod(mesh.values()), mesh.get("tensor", 1)
    episodes, chunks = int(config.data.loader.batch_size), int(config.data.chunking.max_chunks)
    trajectories = episodes * agent.group_size
    real_rows = {"memory": trajectories, "answer": trajectories, "recall": trajectories * agent.recall_group_size}
    turns = {"memory": chunks, "answer": 1, "recall": 1}
    jobs: list[tuple[str, int, cost.Cost]] = []
    for call in shapes.calls:
        count = turns[call.kind] * -(-real_rows[call.kind] // call.rows)
        label = f"{call.kind} B={call.rows} U={call.distinct} P={call.prompt} N={call.new}"
        jobs.append((f"prefill {label}", count, cost.prefill_cost(model, call.distinct, call.prompt)))
        jobs.append((f"decode {label}", count, cost.decode_cost(model, call.rows, call.prompt, call.new)))
    sequences = trajectories * (chunks * int(agent.train_memory_turns) + int(agent.train_final_answer))
    sequences += trajectories * agent.recall_group_size if agent.imr else 0
    updates = int(config.rl.get("updates_per_batch", 1))  # each mini-batch is packed on its own
    per_update = math.ceil(sequences / updates)
    micro = updates * math.ceil(per_update / shapes.train_rows)
    layers = int(config.train.trainable_layers)
    rows, length, window = shapes.train_rows, shapes.train_length, shapes.window
    label = f"M={rows} L={length} W={window}"
    jobs.append(
        (f"accumulate {label}", micro, cost.train_cost(model, rows, length, trainable_layers=layers, scored=window))
    )
    if float(config.rl.kl_coef) > 0:
        jobs.append((f"score (reference) {label}", micro, cost.score_cost(model, rows, length, scored=window)))
    if bool(config.rl.get("recompute_old_logprobs", False)):
        jobs.append((f"score (old policy) {label}", micro, cost.score_cost(model, rows, length, scored=window)))
    jobs.append(("apply", updates, cost.apply_cost(model, layers)))
    programs = []
    for name, count, whole in jobs:
        chip = whole.per_chip(chips, shards)
        seconds = chip.seconds(peak_flops, bandwidth)
        bound = "compute" if chip.flops / peak_flops >= chip.bytes / bandwidth else "memory"
        programs.append(ProgramTime(name, count, chip.flops / 1e12, chip.bytes / GiB, seconds, bound))
    step = sum(p.count * p.seconds for p in programs)
    useful = cost.model_flops(model, micro * rows * length, trainable_layers=layers)
    mfu = useful / (step * chips * peak_flops) if step > 0 else 0.0
    return StepPrediction(tuple(programs), step, mfu, step * int(config.train.steps) / 3600)


@dataclasses.dataclass
class Plan:
    """What `memtrain plan` prints: the slice, mesh, shapes, layout bytes, estimate and compiled programs."""

    target: str
    hbm_bytes: int
    mesh: dict[str, int]
    model: ModelConfig
    shapes: RunShapes
    layout: dict[str, int]  # per-chip bytes of the state as laid out: parameters, optimizer, reference, gradients
    estimate: MemoryEstimate
    programs: list[ProgramStats]
    compiler: str
    prediction: StepPrediction | None = None  # set by `memtrain plan` for the slice (predict_step)
    compile_wall_s: float = 0.0  # all programs, compiled side by side
    compile_workers: int = 1

    @property
    def peak(self) -> ProgramStats | None:
        return max(self.programs, key=lambda p: p.peak) if self.programs else None

    @property
    def peak_bytes(self) -> int:
        if self.programs:
            return self.peak.peak
        return max(self.estimate.train_peak, self.estimate.rollout_peak)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= HEADROOM * self.hbm_bytes

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data (`memtrain plan --out plan.json`)."""
        return {
            "target": self.target,
            "hbm_bytes": self.hbm_bytes,
            "mesh": self.mesh,
            "compiler": self.compiler,
            "shapes": dataclasses.asdict(self.shapes),
            "layout": self.layout,
            "estimate": dataclasses.asdict(self.estimate),
            "programs": [{**dataclasses.asdict(p), "peak": p.peak} for p in self.programs],
            "peak_bytes": self.peak_bytes,
            "fits": self.fits,
            "prediction": self.prediction.to_json() if self.prediction else None,
            "compile_wall_s": self.compile_wall_s,
            "compile_workers": self.compile_workers,
        }

    def suggestions(self) -> list[str]:
        """What to change when the plan does not fit, from the part that dominates the peak."""
        if self.fits:
            return []
        out = []
        est, mesh = self.estimate, self.mesh
        peak = self.peak
        rollout = peak is not None and peak.name.split()[0] in ("prefill", "rows", "decode")
        if est.resident > 0.5 * self.hbm_bytes and mesh["data"] > 1:
            out.append(
                f"more FSDP: mesh_shape ({mesh['data'] // 2}, {mesh['fsdp'] * 2}, {mesh['tensor']}) splits the "
                "parameters and optimizer state over twice the chips"
            )
        if rollout:
            rows = max(c.rows for c in self.shapes.calls)
            out.append(
                f"a smaller rollout micro-batch: sampling.max_rows={max(rows // 2, 1)} (now {rows} rows a call) "
                "halves the KV cache"
            )
        else:
            if self.model.remat == "none":
                out.append("rematerialisation: model.remat=full keeps only each layer's input for the backward pass")
            if self.shapes.train_rows > 1:
                out.append(f"a smaller train.micro_batch_size (now {self.shapes.train_rows})")
        if self.model.param_dtype == "float32":
            out.append("model.param_dtype=bfloat16 halves parameters, optimizer state and reference")
        out.append("or a larger slice")
        return out


def _mesh_dict(mesh: jax.sharding.Mesh) -> dict[str, int]:
    return {name: int(size) for name, size in mesh.shape.items()}


def estimate_plan(config: ml_collections.ConfigDict, chips: int, *, target: str, hbm_bytes: int) -> Plan:
    """The plan from the closed-form estimate alone (no compiler, no devices): `memtrain plan --estimate_only`."""
    model = model_config_of(config.model)
    mesh = dict(zip(sharding.MESH_AXES, sharding.mesh_shape_for(tuple(config.mesh_shape), chips), strict=True))
    rules = sharding.rules_from_config(config.axis_rules)
    batch_axes = dict(rules)["batch"]
    batch_axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,) if batch_axes else ()
    shapes = run_shapes(config, math.prod(mesh[a] for a in batch_axes))
    layers = int(config.train.trainable_layers)
    est = _estimate(model, mesh, config, shapes, 1.0 if layers == 0 else min(layers / model.num_layers, 1.0))
    return Plan(target, hbm_bytes, mesh, model, shapes, {}, est, [], "none (estimate only)")


def _estimate(model, mesh, config, shapes: RunShapes, trainable: float) -> MemoryEstimate:
    biggest = max(shapes.calls, key=lambda c: c.rows * c.slots)
    return estimate(
        model, mesh, trainable_fraction=trainable, with_reference=float(config.rl.kl_coef) > 0,
        rollout_rows=biggest.rows, rollout_slots=biggest.slots, train_rows=shapes.train_rows,
        train_length=shapes.train_length, logprob_chunk=int(config.train.logprob_chunk),
    )  # fmt: skip


def rollout_sampler(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> Sampler:
    """The run's Sampler over `devices` (a TPU slice's, or this host's): its model, mesh and axis rules."""
    mesh = sharding.make_mesh(tuple(config.mesh_shape), devices=list(devices))
    rules = sharding.rules_from_config(config.axis_rules)
    return Sampler(model_config_of(config.model), mesh, rules, Buckets.from_config(config))


def update_learner(config: ml_collections.ConfigDict, sampler: Sampler) -> Learner:
    """The run's Learner on the rollout sampler's model, mesh and axis rules."""
    return Learner.from_config(config, sampler.config, sampler.mesh, sampler.rules)


def train_temporaries(config: ml_collections.ConfigDict, tpu: TpuSlice) -> tuple[int, int]:
    """(compiled, estimated) per-chip temporaries of the run's train step (`accumulate`, one micro-batch's forward
    and backward) on slice `tpu`: the TPU compiler's, and the closed-form estimate's `train_temporaries`."""
    sampler = rollout_sampler(config, topology_devices(tpu))
    shapes = run_shapes(config, sampler.batch_multiple)
    lowered = update_learner(config, sampler).lower_programs(shapes.train_rows, shapes.train_length, shapes.window)
    compiled = lowered["accumulate"].compile().memory_analysis().temp_size_in_bytes
    estimated = estimate_plan(config, tpu.chips, target=tpu.name, hbm_bytes=tpu.hbm_bytes).estimate.train_temporaries
    return int(compiled), int(estimated)


def rollout_programs(calls: Sequence[RolloutCall]) -> list[tuple[tuple[str, ...], RolloutCall]]:
    """The rollout programs a plan compiles: one per (rows, distinct prompts, decode steps), at the longest prompt
    of the turns that share them, with those turns' kinds ((kinds, call), in the turns' order).

    Turns that differ only in prompt length (the paper's memory update, final answer and recall probe: the same
    rows and 1,024-token replies, prompts of 6,400, 1,280 and 6,656 tokens) then share one prefill and one decode
    program: the longest prompt's program is the same computation on larger arrays, so its memory bounds theirs
    (a run compiles the shorter prompts' buckets too; the plan checks what fits and what the compiler accepts)."""
    longest: dict[tuple[int, int, int], RolloutCall] = {}
    kinds: dict[tuple[int, int, int], list[str]] = {}
    for call in calls:
        key = (call.rows, call.distinct, call.new)
        if call.kind not in kinds.setdefault(key, []):
            kinds[key].append(call.kind)
        if key not in longest or call.prompt > longest[key].prompt:
            longest[key] = call
    return [(tuple(kinds[key]), call) for key, call in longest.items()]


def compile_or_refusal(program: jax.stages.Lowered) -> tuple[Any, str]:
    """(the compiled program, "") or (None, the compiler's one-line refusal) when the program does not fit a
    chip's HBM (the compiler's own verdict); any other compiler error is raised."""
    try:
        return program.compile(), ""
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, str(e).splitlines()[0][:200]


def make_plan(
    config: ml_collections.ConfigDict,
    devices: Sequence[Any],
    *,
    target: str,
    hbm_bytes: int,
    log=print,
    compile_workers: int = 0,
) -> Plan:
    """Builds the run's Learner and Sampler over `devices` (a TPU slice's, or this host's), lowers their
    programs at the run's shapes and compiles them for those devices, `compile_workers` at a time (0: one per
    host core)."""
    sampler = rollout_sampler(config, devices)
    model, mesh = sampler.config, sampler.mesh
    learner = update_learner(config, sampler)
    shapes = run_shapes(config, sampler.batch_multiple)
    if shapes.train_rows % learner.batch_multiple:
        raise ValueError(
            f"train.micro_batch_size={shapes.train_rows} must be a multiple of the batch shards "
            f"({learner.batch_multiple}) of mesh {_mesh_dict(mesh)}."
        )
    state = learner.abstract_state()
    layout = {
        "parameters": chip_bytes(state.params),
        "optimizer": chip_bytes(state.opt_state),
        "reference": chip_bytes(state.ref_params) if state.ref_params is not None else 0,
        "gradients": chip_bytes(learner.abstract_grads()),
    }
    est = _estimate(model, _mesh_dict(mesh), config, shapes, layout["gradients"] / max(layout["parameters"], 1))
    opt, ref, grads = layout["optimizer"], layout["reference"], layout["gradients"]
    jobs = []
    for kinds, call in rollout_programs(shapes.calls):
        lowered = sampler.lower_programs(call.rows, call.distinct, call.prompt, call.new)
        label = f"{'+'.join(kinds)} B={call.rows} U={call.distinct} P={call.prompt} N={call.new}"
        # through a rollout the optimizer state and the KL reference stay on the chip
        jobs.append((f"prefill {label}", lowered["prefill"], opt + ref))
        jobs.append((f"rows {label}", lowered["rows"], layout["parameters"] + opt + ref))  # params: not its argument
        jobs.append((f"decode {label}", lowered["decode"], opt + ref))
    lowered = learner.lower_programs(shapes.train_rows, shapes.train_length, shapes.window)
    label = f"M={shapes.train_rows} L={shapes.train_length} W={shapes.window}"
    jobs.append((f"accumulate {label}", lowered["accumulate"], opt + ref))
    jobs.append(("apply", lowered["apply"], 0))  # its arguments are the whole state and the gradients
    if "score" in lowered:
        jobs.append((f"score {label}", lowered["score"], layout["parameters"] + opt + grads))

    def compile_one(job: tuple[str, Any, int]) -> ProgramStats:
        name, program, outside = job
        log(f"[plan] compiling {name} ...")
        start = time.perf_counter()
        compiled, error = compile_or_refusal(program)
        if error:
            return ProgramStats(name, 0, 0, 0, 0, outside, float("nan"), error, time.perf_counter() - start)
        return program_stats(name, compiled, outside, time.perf_counter() - start)

    # The compiler releases the GIL: programs compiled side by side use the host's cores (each compile alone keeps
    # about 1.3 of them busy), so a plan takes less wall time; each program's compile_s is then measured concurrently.
    workers = max(1, min(len(jobs), compile_workers or os.cpu_count() or 1))
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        programs = list(pool.map(compile_one, jobs))
    wall = time.perf_counter() - start
    compiler = f"{devices[0].platform} ({devices[0].device_kind})"
    return Plan(
        target, hbm_bytes, _mesh_dict(mesh), model, shapes, layout, est, programs, compiler,
        compile_wall_s=wall, compile_workers=workers,
    )  # fmt: skip


def format_plan(plan: Plan) -> str:
    """The plan as the command prints it."""
    g = lambda b: f"{b / GiB:8.2f}"
    mesh = " x ".join(f"{k} {v}" for k, v in plan.mesh.items())
    lines = [
        f"plan: {plan.model.family} {plan.model.num_params() / 1e9:.2f}B parameters ({plan.model.param_dtype} "
        f"storage, {plan.model.dtype} compute, remat {plan.model.remat}) on {plan.target}: mesh {mesh}; "
        f"{plan.hbm_bytes / GiB:.1f} GiB HBM a chip; compiler: {plan.compiler}",
        "shapes: "
        + "; ".join(f"{c.kind} B={c.rows} U={c.distinct} P={c.prompt} N={c.new}" for c in plan.shapes.calls)
        + f"; train M={plan.shapes.train_rows} L={plan.shapes.train_length} W={plan.shapes.window}",
        "",
        "per chip (GiB)        laid out   estimate",
    ]
    est = plan.estimate
    for label, key, value in [
        ("parameters", "parameters", est.parameters),
        ("optimizer state", "optimizer", est.optimizer),
        ("KL reference", "reference", est.reference),
        ("gradients", "gradients", est.gradients),
    ]:
        laid_out = g(plan.layout[key]) if plan.layout else f"{'-':>8s}"
        lines.append(f"{label:20s} {laid_out}   {g(value)}")
    lines.append(f"{'KV cache (largest)':20s} {'':8s}   {g(est.kv_cache)}")
    lines.append(f"{'train temporaries':20s} {'':8s}   {g(est.train_temporaries)}")
    if plan.programs:
        columns = ("args", "outputs", "aliased", "temps", "peak", "TFLOP")
        title = "program (per chip: GiB; TFLOP by XLA, kernels not counted)"
        lines += ["", f"{title:58s} " + " ".join(f"{c:>8s}" for c in columns) + f" {'compile s':>9s}"]
        for p in plan.programs:
            if p.error:
                lines.append(f"{p.name[:58]:58s} refused by the compiler: {p.error}")
                continue
            lines.append(
                f"{p.name[:58]:58s} {g(p.arguments)} {g(p.outputs)} {g(p.aliased)} {g(p.temporaries)} {g(p.peak)} "
                f"{p.flops / 1e12:8.3f} {p.compile_s:9.1f}"
            )
        side_by_side = " (each program's compile s measured beside the others)" if plan.compile_workers > 1 else ""
        lines.append(
            f"compiled {len(plan.programs)} programs in {plan.compile_wall_s:.0f} s, "
            f"{plan.compile_workers} at a time{side_by_side}"
        )
        accumulate = next((p for p in plan.programs if p.name.startswith("accumulate") and not p.error), None)
        if accumulate is not None and accumulate.temporaries:
            lines.append(
                f"accumulate temporaries: compiled {g(accumulate.temporaries).strip()} GiB, estimated "
                f"{g(est.train_temporaries).strip()} GiB ({est.train_temporaries / accumulate.temporaries:.2f}x)"
            )
    if plan.prediction is not None:
        pred = plan.prediction
        lines += ["", f"{'predicted step (analytic, per chip, roofline; no overlap)':58s} {'runs':>5s} {'TFLOP':>8s} "
                  f"{'GiB':>8s} {'ms':>9s}  bound"]  # fmt: skip
        for p in pred.programs:
            lines.append(
                f"{p.name[:58]:58s} {p.count:5d} {p.tflop:8.3f} {p.gib:8.2f} {1e3 * p.seconds:9.2f}  {p.bound}"
            )
        lines.append(
            f"step {pred.step_seconds:.2f} s, MFU {100 * pred.mfu:.1f}% (update FLOPs / step time x peak), "
            f"{pred.run_hours:.1f} h for the run's steps"
        )
    peak = plan.peak_bytes
    source = f"compiled, {plan.peak.name.split()[0]}" if plan.programs else "estimated"
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    if math.isfinite(peak):
        amount = f"{peak / GiB:.2f} GiB of {plan.hbm_bytes / GiB:.1f} GiB ({100 * peak / plan.hbm_bytes:.0f}%"
    else:
        amount = f"more than {plan.hbm_bytes / GiB:.1f} GiB ({plan.peak.name.split()[0]} refused by the compiler"
    lines += ["", f"peak ({source}): {amount}, usable {100 * HEADROOM:.0f}%): {verdict}"]
    for s in plan.suggestions():
        lines.append(f"  suggestion: {s}")
    return "\n".join(lines)
