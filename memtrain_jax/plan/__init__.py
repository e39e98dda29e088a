"""Pod plans: TPU slices, a closed-form memory estimate, and the run's programs compiled for a slice."""

from memtrain_jax.plan.estimate import MemoryEstimate, estimate, parameter_bytes
from memtrain_jax.plan.plan import (
    HEADROOM,
    Plan,
    RunShapes,
    StepPrediction,
    compile_or_refusal,
    estimate_plan,
    format_plan,
    make_plan,
    predict_step,
    rollout_programs,
    rollout_sampler,
    run_shapes,
    train_temporaries,
    update_learner,
)
from memtrain_jax.plan.topology import TpuSlice, parse_slice, topology_devices

__all__ = [
    "HEADROOM",
    "MemoryEstimate",
    "Plan",
    "RunShapes",
    "TpuSlice",
    "compile_or_refusal",
    "estimate",
    "estimate_plan",
    "format_plan",
    "make_plan",
    "predict_step",
    "StepPrediction",
    "parameter_bytes",
    "parse_slice",
    "rollout_programs",
    "rollout_sampler",
    "run_shapes",
    "topology_devices",
    "train_temporaries",
    "update_learner",
]
