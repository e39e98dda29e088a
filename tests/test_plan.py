"""Pod plans: slice names, the closed-form estimate against arrays really laid out on the fake 8-device mesh,
the compiled plan's bytes against the layout, and (with libtpu) plans compiled for real TPU slices."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from memtrain_jax import sharding
from memtrain_jax.config import load_config
from memtrain_jax.model import ModelConfig, init_params, param_shardings
from memtrain_jax.plan import (
    estimate,
    estimate_plan,
    format_plan,
    make_plan,
    parse_slice,
    rollout_programs,
    rollout_sampler,
    run_shapes,
    topology_devices,
)
from memtrain_jax.plan.plan import chip_bytes
from memtrain_jax.plan.topology import GiB
from memtrain_jax.sampler import Sampler
from memtrain_jax.train.learner import Learner, OptimConfig, loss_config_from

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_slice_names():
    cases = {
        "v4-8": (4, "v4:2x2x1", 32),
        "v5e-16": (16, "v5e:4x4", 16),
        "v5litepod-16": (16, "v5e:4x4", 16),
        "v5p-64": (32, "v5p:2x4x4", 95),
        "v6e-8": (8, "v6e:2x4", 32),
    }
    for name, (chips, topology, hbm) in cases.items():
        tpu = parse_slice(name)
        assert (tpu.chips, tpu.topology, tpu.hbm_bytes) == (chips, topology, hbm * GiB), name
    with pytest.raises(ValueError, match=r"No v5p slice 'v5p-6'; known: v5p-8, v5p-16"):
        parse_slice("v5p-6")
    with pytest.raises(ValueError, match=r"Unknown TPU slice 'tpu-8'.*v4-8, v5e-16"):
        parse_slice("tpu-8")


def _model(**kw) -> ModelConfig:
    values = load_config("models.py:tiny").to_dict()
    values.update(kw)
    return ModelConfig.from_dict(values)


def _device0_bytes(tree) -> int:
    """Bytes device 0 really holds of every array leaf (one shard each)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        (shard,) = [s for s in leaf.addressable_shards if s.device == jax.devices()[0]]
        total += shard.data.nbytes
    return total


MODELS = {
    "llama": {},
    "qwen2 (qkv bias)": {"qkv_bias": True, "tie_embeddings": True},
    "qwen3 (qk norm), 3 kv heads": {"qk_norm": True, "num_kv_heads": 1, "num_heads": 3, "vocab_size": 500},
}


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 2, 4), (8, 1, 1)])
@pytest.mark.parametrize("name", list(MODELS))
def test_estimate_equals_the_arrays_on_the_mesh(name, mesh_shape):
    """Parameters, AdamW state, KL reference and KV cache: the formulas give exactly what device 0 holds
    (including dimensions an axis does not divide: 1 or 3 kv heads, 500 vocabulary entries over 4)."""
    config = _model(**MODELS[name])
    mesh = sharding.make_mesh(mesh_shape)
    shardings = param_shardings(config, mesh)
    params = init_params(config, jax.random.key(0), shardings)
    learner = Learner(
        config, mesh, sharding.DEFAULT_RULES, OptimConfig(), loss_config_from(load_config("memtrain.py:tiny").rl)
    )
    state = learner.init_state(params)
    sampler = Sampler(config, mesh)
    rows, slots = 16, 96
    cache = sampler.new_cache(rows, slots)
    got = estimate(
        config, dict(mesh.shape), with_reference=True, rollout_rows=rows, rollout_slots=slots,
        train_rows=8, train_length=64, logprob_chunk=32,
    )  # fmt: skip
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]  # AdamW's mu and nu (not its counts)
    assert got.parameters == _device0_bytes(state.params) == chip_bytes(state.params)
    assert got.optimizer == _device0_bytes(moments)
    assert got.reference == _device0_bytes(state.ref_params)
    assert got.kv_cache == _device0_bytes([cache["k"], cache["v"]])
    assert got.gradients == got.parameters


def test_estimate_counts_trainable_layers_and_dtypes():
    config = _model(param_dtype="bfloat16", dtype="bfloat16")
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    full = estimate(config, mesh, rollout_rows=4, rollout_slots=64, train_rows=4, train_length=64, logprob_chunk=32)
    assert full.parameters == config.num_params() * 2  # bfloat16 storage, nothing split
    half = estimate(
        config, mesh, trainable_fraction=0.5, with_reference=False, rollout_rows=4, rollout_slots=64,
        train_rows=4, train_length=64, logprob_chunk=32,
    )  # fmt: skip
    assert (half.optimizer, half.gradients, half.reference) == (full.parameters, full.parameters // 2, 0)
    kv = 2 * config.num_layers * 4 * config.num_kv_heads * 64 * config.head_dim * 2
    assert full.kv_cache == kv
    remat = estimate(
        dataclasses.replace(config, remat="full"), mesh, rollout_rows=4, rollout_slots=64, train_rows=4,
        train_length=64, logprob_chunk=32,
    )  # fmt: skip
    assert remat.activations < full.activations


def _tiny_plan_config():
    config = load_config("memtrain.py:tiny")
    config.mesh_shape = (2, 2, 2)
    config.train.micro_batch_size = 8
    return config


def test_run_shapes_follow_the_config():
    config = _tiny_plan_config()
    agent = config.agent
    shapes = run_shapes(config, 4)
    calls = {c.kind: c for c in shapes.calls}
    episodes = config.data.loader.batch_size
    assert calls["memory"].rows >= episodes * agent.group_size and calls["memory"].rows % 4 == 0
    assert calls["recall"].rows >= episodes * agent.group_size * agent.recall_group_size
    assert calls["memory"].new >= agent.memory_tokens
    assert calls["memory"].prompt >= config.data.chunking.chunk_size + agent.memory_tokens
    assert shapes.train_length % config.train.length_block == 0
    config.sampling.max_rows = 4
    assert max(c.rows for c in run_shapes(config, 4).calls) == 4  # the rollout micro-batch bounds every call
    # Prompt lengths follow sampling.length_block: in 16-token blocks every turn's prompt is a multiple of 16, no
    # longer than in 256-token blocks, where (up to 256) it is that multiple's next power of two.
    config.sampling.length_block = 256
    wide = {c.kind: c.prompt for c in run_shapes(config, 4).calls}
    config.sampling.length_block = 16
    tight = {c.kind: c.prompt for c in run_shapes(config, 4).calls}
    assert all(p % 16 == 0 and p <= wide[kind] for kind, p in tight.items())
    assert all(wide[kind] == 1 << (p - 1).bit_length() for kind, p in tight.items() if wide[kind] <= 256)


def test_turns_that_differ_only_in_prompt_length_share_the_longest_prompts_programs():
    """The paper's turns on v6e-8 (memory update, final answer, recall probe): the same rows and decode steps, prompts
    of different lengths; one prefill and one decode program at the longest prompt (the recall's) serve all three."""
    config = load_config("pod.py:qwen3-4b,v6e-8")
    calls = {c.kind: c for c in run_shapes(config, 8).calls}
    memory, answer, recall = calls["memory"], calls["answer"], calls["recall"]
    assert len({(c.rows, c.distinct, c.new) for c in calls.values()}) == 1
    assert answer.prompt < memory.prompt < recall.prompt
    assert rollout_programs(run_shapes(config, 8).calls) == [(("memory", "answer", "recall"), recall)]
    # Other rows or decode steps are other programs; equal calls are one.
    other = dataclasses.replace(memory, kind="recall", rows=2 * memory.rows)
    assert rollout_programs([memory, other, memory]) == [(("memory",), memory), (("recall",), other)]
    other = dataclasses.replace(memory, kind="recall", new=memory.new // 2, prompt=memory.prompt + 256)
    assert [call for _, call in rollout_programs([memory, other])] == [memory, other]


def test_plan_on_this_hosts_devices_matches_the_layout():
    """The compiled programs' arguments are the state as laid out: `apply` takes the whole train state and the
    gradients (device 0's bytes of each), the decode takes the parameters and a cache of the estimated size."""
    config = _tiny_plan_config()
    plan = make_plan(config, jax.devices(), target="cpu x8", hbm_bytes=16 * GiB, log=lambda _: None)
    layout, est = plan.layout, plan.estimate
    assert (layout["parameters"], layout["reference"], layout["gradients"]) == (
        est.parameters, est.reference, est.gradients,
    )  # fmt: skip
    programs = {p.name.split()[0]: p for p in plan.programs}
    assert set(programs) == {"prefill", "rows", "decode", "accumulate", "apply", "score"}
    apply = programs["apply"]
    scalars = 4 + 4  # the step counter and the loss count
    opt_counts = layout["optimizer"] - est.optimizer  # AdamW's step counts beside its moments
    assert apply.arguments == sum(layout.values()) + scalars and opt_counts >= 0
    decode = max((p for p in plan.programs if p.name.startswith("decode")), key=lambda p: p.arguments)
    assert decode.arguments >= est.parameters + est.kv_cache
    assert decode.aliased > 0  # the cache is donated
    rows = max((p for p in plan.programs if p.name.startswith("rows")), key=lambda p: p.outputs)
    assert rows.outputs >= est.kv_cache  # it makes the cache the decode is donated
    assert all(p.peak >= p.arguments and p.flops > 0 for p in plan.programs)
    text = format_plan(plan)
    assert "fits" in text and "apply" in text
    tight = dataclasses.replace(plan, hbm_bytes=plan.peak_bytes // 2)
    assert not tight.fits and tight.suggestions()


def test_programs_compiled_side_by_side_equal_those_compiled_one_at_a_time():
    """`make_plan` compiles its programs in threads: the same programs, in the same order, with the same
    compiled bytes and FLOPs as compiling them one after the other."""
    config = _tiny_plan_config()
    one, both = (
        make_plan(config, jax.devices(), target="cpu x8", hbm_bytes=16 * GiB, log=lambda _: None, compile_workers=n)
        for n in (1, 3)
    )
    assert (one.compile_workers, both.compile_workers) == (1, 3)
    strip = lambda p: dataclasses.replace(p, compile_s=0.0)
    assert [strip(p) for p in both.programs] == [strip(p) for p in one.programs]
    assert len(one.programs) >= 5 and both.compile_wall_s > 0
    # compiled longest first (accumulate), listed in the run's order: the rollout's programs, then the update's
    kinds = [p.name.split()[0] for p in both.programs]
    assert kinds[:3] == ["prefill", "rows", "decode"] and kinds.index("apply") == kinds.index("accumulate") + 1


def test_estimate_only_plan_needs_no_devices():
    config = load_config("memtrain.py:paper")
    config.model.preset = "qwen3-4b"
    config.mesh_shape = (4, 8, 1)
    plan = estimate_plan(config, 32, target="v5p-64", hbm_bytes=95 * GiB)
    assert plan.programs == [] and plan.mesh == {"data": 4, "fsdp": 8, "tensor": 1}
    assert plan.estimate.parameters == pytest.approx(plan.model.num_params() * 4 / 8, rel=1e-3)
    with pytest.raises(ValueError, match="model.preset"):
        config.model.preset = ""
        estimate_plan(config, 32, target="v5p-64", hbm_bytes=95 * GiB)
    assert math.isfinite(plan.peak_bytes)
    np.testing.assert_equal(plan.fits, plan.peak_bytes <= 0.94 * 95 * GiB)


def test_predicted_step_sums_each_program_as_often_as_a_step_runs_it():
    """qwen3-4b on v5p-64 (the paper's recipe): memory turns run once a chunk, every program at its analytic
    roofline per chip; the step is their sum and MFU the update's model FLOPs over step time x chips x peak."""
    from memtrain_jax.plan import cost, predict_step

    config = load_config("pod.py:qwen3-4b,v5p-64")
    tpu = parse_slice("v5p-64")
    plan = estimate_plan(config, tpu.chips, target=tpu.name, hbm_bytes=tpu.hbm_bytes)
    pred = predict_step(config, plan.model, plan.shapes, plan.mesh, tpu.peak_flops, tpu.hbm_bandwidth)
    by_name = {p.name.split(" B=")[0].split(" M=")[0]: p for p in pred.programs}
    chunks, episodes = config.data.chunking.max_chunks, config.data.loader.batch_size
    trajectories = episodes * config.agent.group_size
    memory = next(c for c in plan.shapes.calls if c.kind == "memory")
    assert by_name["decode memory"].count == chunks * -(-trajectories // memory.rows)
    assert by_name["prefill answer"].count == -(-trajectories // memory.rows)
    sequences = trajectories * (chunks + 1) + trajectories * config.agent.recall_group_size
    assert by_name["accumulate"].count == -(-sequences // plan.shapes.train_rows)
    decode = cost.decode_cost(plan.model, memory.rows, memory.prompt, memory.new).per_chip(tpu.chips)
    assert by_name["decode memory"].seconds == pytest.approx(decode.seconds(tpu.peak_flops, tpu.hbm_bandwidth))
    assert by_name["decode memory"].bound == "memory"  # decode streams the weights for a few rows a chip
    assert pred.step_seconds == pytest.approx(sum(p.count * p.seconds for p in pred.programs))
    tokens = by_name["accumulate"].count * plan.shapes.train_rows * plan.shapes.train_length
    useful = cost.model_flops(plan.model, tokens)
    assert pred.mfu == pytest.approx(useful / (pred.step_seconds * tpu.chips * tpu.peak_flops))
    assert 0 < pred.mfu < 1 and pred.run_hours == pytest.approx(pred.step_seconds * config.train.steps / 3600)
    text = format_plan(dataclasses.replace(plan, prediction=pred))
    assert "predicted step" in text and f"MFU {100 * pred.mfu:.1f}%" in text


def _pod_module():
    from memtrain_jax.config import CONFIGS_DIR

    spec = importlib.util.spec_from_file_location("pod_presets", os.path.join(CONFIGS_DIR, "pod.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRESETS = _pod_module().PAPER_PRESETS


@pytest.mark.parametrize("model,slice_name", PRESETS)
def test_paper_presets_fit_by_the_estimate(model, slice_name):
    config = load_config(f"pod.py:{model},{slice_name}")
    tpu = parse_slice(slice_name)
    plan = estimate_plan(config, tpu.chips, target=tpu.name, hbm_bytes=tpu.hbm_bytes)
    assert plan.fits, format_plan(plan)
    assert config.train.micro_batch_size % tpu.chips == 0 and config.sampling.max_rows % tpu.chips == 0


def test_pod_config_refuses_bad_names():
    with pytest.raises(ValueError, match="MODEL,SLICE"):
        load_config("pod.py:qwen3-4b")
    with pytest.raises(ValueError, match="Unknown TPU slice 'v9-8'"):
        load_config("pod.py:qwen3-4b,v9-8")


# Every preset's whole plan (scanned layers) compiles in 1.5-3.5 min on two cores (README, "Multi-host and pod plans").


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (pip install '.[tpu]') compiles for TPU slices")
@pytest.mark.parametrize("model,slice_name", PRESETS)
def test_paper_presets_fit_when_compiled_for_their_slice(model, slice_name, tmp_path):
    """`memtrain plan` as a user runs it (its own process: compiling a model takes GiBs of host memory), with the
    TPU compiler's own numbers: every program compiles within the chip's HBM, the state's arguments are the
    layout (within the TPU tiles' padding), and the layout equals the estimate."""
    out = tmp_path / "plan.json"
    done = subprocess.run(
        [sys.executable, "-m", "memtrain_jax.tools.main", "plan", "--config", f"configs/pod.py:{model},{slice_name}",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(out.read_text())
    assert plan["fits"] and plan["compiler"].startswith("tpu"), done.stdout
    programs = {p["name"].split()[0] for p in plan["programs"]}
    assert programs == {"prefill", "rows", "decode", "accumulate", "apply", "score"} and not any(
        p["error"] for p in plan["programs"]
    )
    est, layout = plan["estimate"], plan["layout"]
    for key in ("parameters", "reference", "gradients"):
        assert layout[key] == est[key], key
    # `apply` takes the whole state and the gradients: the compiler allocates them as laid out, give or take
    # the TPU tiles' padding of small dimensions (norm vectors, scalars), well under 1% for these models.
    apply = next(p for p in plan["programs"] if p["name"] == "apply")
    assert sum(layout.values()) <= apply["arguments"] <= 1.01 * sum(layout.values())
    assert "fits" in done.stdout and "apply" in done.stdout
    # The closed-form train temporaries (activations, log-softmax block, fresh gradients) against the compiler's.
    accumulate = next(p for p in plan["programs"] if p["name"].startswith("accumulate"))
    estimated = est["activations"] + est["logits"] + est["gradients"]
    assert 0.75 <= estimated / accumulate["temporaries"] <= 1.25, (estimated, accumulate["temporaries"])


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (pip install '.[tpu]') describes TPU slices")
def test_programs_for_a_slice_use_the_tpu_attention_kernel():
    """'auto' attention follows the mesh's devices: lowered for a v5p slice here, the prefill calls the splash
    (Mosaic) kernel, not its interpret-mode emulation; for this host's CPU devices, the blocked kernel."""
    config = _model(hidden_size=256, num_heads=4, num_kv_heads=2, head_dim=128)
    tpu_mesh = sharding.make_mesh((1, 4, 1), devices=topology_devices(parse_slice("v5p-8")))
    text = Sampler(config, tpu_mesh).lower_programs(8, 8, 512, 16)["prefill"].as_text()
    assert "tpu_custom_call" in text
    cpu_text = Sampler(config, sharding.make_mesh((1, 4, 1), devices=jax.devices()[:4])).lower_programs(8, 8, 512, 16)
    assert "tpu_custom_call" not in cpu_text["prefill"].as_text()


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (pip install '.[tpu]') compiles for TPU slices")
def test_scanned_decode_temporaries_stay_within_the_unrolled_ones_on_a_slice():
    """The first preset's memory-turn decode, compiled for its slice with scanned and with unrolled layers: the
    scanned one writes the stacked KV cache in place, so its temporaries are at most 1.1x the unrolled ones (it
    gathered a whole copy of the cache before: 31 GiB against 1.6 GiB here), and both alias the cache."""
    model, slice_name = PRESETS[0]
    devices = topology_devices(parse_slice(slice_name))
    temps = {}
    for scan in (True, False):
        config = load_config(f"pod.py:{model},{slice_name}")
        config.model.scan_layers = scan
        sampler = rollout_sampler(config, devices)
        call = next(c for c in run_shapes(config, sampler.batch_multiple).calls if c.kind == "memory")
        lowered = sampler.lower_programs(call.rows, call.distinct, call.prompt, call.new)["decode"]
        memory = lowered.compile().memory_analysis()
        assert memory.alias_size_in_bytes >= 0.99 * memory.output_size_in_bytes  # the donated cache is the output
        temps[scan] = memory.temp_size_in_bytes
    assert temps[True] <= 1.1 * temps[False], temps
