"""`memtrain [COMMAND] [--config configs/memtrain.py:VARIANT] [--workdir DIR] [--config.a.b=value ...]`.

Commands:
  train (default)  MemTrain: GRPO training of the memory agent (resumes from the latest checkpoint in DIR);
                   prints a table of held-out accuracy and reward before and after
  eval             evaluates a checkpoint of DIR (latest, or --step N) on the held-out episodes
  export           writes a checkpoint's policy as a HuggingFace safetensors folder (--out OUT)
  plot             writes DIR/curves.png from the run's metrics
  chat             one chat reply from the policy (--prompt TEXT): is the model loaded right?
  eval-qa          long-text QA by context length: --qa-file FILE (HotpotQA/SQuAD JSON or JSONL; default the
                   dev set prepared from the pool) --num-docs 50,200 --limit N [--baseline] [--plot]; the model is
                   the config's, or a run's latest checkpoint with --config.init_from=RUN; writes DIR/results.json
  eval-search      search QA (MEM1's loop, two questions an episode) over the pool: --limit N
  compare          the paper's Table 1: the base model and each --arms name=RUN on the same long-text QA set
  plan             --topology v5p-64: compiles the config's train step and rollout programs for that TPU slice on
                   this machine (libtpu, no TPU) and prints per-chip memory, FLOPs and whether it fits;
                   --estimate_only: the closed-form estimate alone (no libtpu)

With no arguments, `memtrain` trains configs/memtrain.py:cpu: the real SmolLM2-135M-Instruct on the
shipped Wikipedia pool, on this CPU, in a few minutes.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from memtrain_jax.config import CONFIGS_DIR

COMMANDS = ("train", "eval", "export", "plot", "chat", "eval-qa", "eval-search", "compare", "plan")

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(CONFIGS_DIR, "memtrain.py:cpu"), "Training config (path.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for eval/export (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output folder of export / PNG of plot / JSON of plan.")
_PROMPT = flags.DEFINE_string(
    "prompt", "Tell me about Paris, the capital of France, in three sentences.", "chat prompt."
)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "chat reply budget.")
_QA_FILE = flags.DEFINE_string("qa-file", None, "eval-qa/compare: a HotpotQA JSON, SQuAD JSON or JSONL file.")
_NUM_DOCS = flags.DEFINE_list("num-docs", None, "eval-qa/compare: context lengths in documents, e.g. 50,200.")
_LIMIT = flags.DEFINE_integer("limit", None, "eval-qa/eval-search/compare: the first N questions (0 = all).")
_BASELINE = flags.DEFINE_bool("baseline", False, "eval-qa: also the full-context reader on the same questions.")
_PLOT = flags.DEFINE_bool("plot", False, "eval-qa / compare: write DIR/qa_accuracy.png / compare_accuracy.png.")
_ARMS = flags.DEFINE_string("arms", "", "compare: name=WORKDIR,... (each a training run of the same model).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "plan: the TPU slice, e.g. v4-8, v5e-16, v5p-64, v6e-8 (default: the config's `topology`)."
)
_ESTIMATE_ONLY = flags.DEFINE_bool("estimate_only", False, "plan: the closed-form estimate only (no compiler).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Start JAX's multi-process runtime first (launch/tpu_vm.sh and launch/local.sh set it); on TPU VMs JAX finds the "
    "other hosts itself, elsewhere give --coordinator, --num_processes and --process_id.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "--distributed: host:port of process 0 (or MEMTRAIN_COORDINATOR; not needed on TPU VMs)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "--distributed: processes in all (MEMTRAIN_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process, 0-based (MEMTRAIN_PROCESS_ID).")


def _workdir(config: ml_collections.ConfigDict) -> str:
    return _WORKDIR.value or config.workdir


def _stored_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (eval/export read the run as it was)."""
    from memtrain_jax.train.trainer import CONFIG_FILE

    path = epath.Path(workdir) / CONFIG_FILE  # a local folder or gs://
    if not path.exists():
        raise app.UsageError(f"{path} not found: {workdir} is not a memtrain workdir (train first).")
    values = json.loads(path.read_text(encoding="utf-8"))
    values["axis_rules"] = tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in values["axis_rules"]
    )
    values["mesh_shape"] = tuple(values["mesh_shape"])
    return ml_collections.ConfigDict(values)


def _table(before: dict, after: dict, config: ml_collections.ConfigDict) -> str:
    """The closing before/after table; recall rows only where the task has recall probes."""
    extractor = config.agent.answer_extractor
    found = "answers boxed" if extractor == "boxed" else f"answers found ({extractor})"
    rows = [("E2E accuracy (final answer EM)", "acc_e2e"), ("E2E reward R_E", "reward_e2e")]
    if config.agent.imr:
        rows.append(("recall accuracy (R_I)", "acc_recall"))
    rows.append((found, "missing_box_answer"))
    if config.agent.imr:
        rows.append(("recall answers boxed", "missing_box_recall"))
    lines = [f"{'held-out, greedy':34s} {'before':>8s} {'after':>8s}"]
    for label, key in rows:
        value = lambda m, k=key: (1 - m[k]) if k.startswith("missing") else m[k]
        lines.append(f"{label:34s} {value(before):8.3f} {value(after):8.3f}")
    return "\n".join(lines)


def train(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.train import Trainer

    workdir = _workdir(config)
    start = time.perf_counter()
    trainer = Trainer(config, workdir)
    summary = trainer.train()
    if jax.process_index() != 0:  # every process trains; process 0 reports
        return
    minutes = (time.perf_counter() - start) / 60
    print(f"\n[memtrain] {summary['steps']} steps in {workdir} ({minutes:.1f} min this run)")
    if summary.get("preempted"):
        print("[memtrain] stopped by SIGTERM after saving a checkpoint; run the same command to resume")
    if "before" in summary and "after" in summary:
        print(_table(summary["before"], summary["after"], config))
    elif "after" in summary:
        print("after: " + json.dumps({k: round(v, 3) for k, v in summary["after"].items()}))
    print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}; TensorBoard: tensorboard --logdir {workdir}/tensorboard")
    print(f"curves: memtrain plot --workdir {workdir}; export: memtrain export --workdir {workdir} --out DIR")


def _restored(workdir: str):
    from memtrain_jax.train import Trainer

    trainer = Trainer(_stored_config(workdir), workdir)
    abstract = jax.eval_shape(trainer.initial_state)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, trainer.learner.state_shardings
    )
    step, state, _ = trainer.checkpointer.restore_state(abstract, _STEP.value)
    return trainer, step, state


def evaluate(config: ml_collections.ConfigDict) -> None:
    workdir = _workdir(config)
    trainer, step, state = _restored(workdir)
    metrics = trainer.evaluate(state.params, step)
    if jax.process_index() != 0:  # every process evaluates; process 0 reports and writes
        return
    print(f"[eval] {workdir} step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    (epath.Path(workdir) / f"eval-{step}.json").write_text(json.dumps({"step": step, **metrics}, indent=1))


def export(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.checkpoint.hf import save_hf_checkpoint

    if not _OUT.value:
        raise app.UsageError("export needs --out DIR (the HuggingFace folder to write).")
    workdir = _workdir(config)
    trainer, step, state = _restored(workdir)
    save_hf_checkpoint(trainer.setup.policy.model_config, jax.device_get(state.params), _OUT.value)
    tokenizer = trainer.setup.tokenizer
    if hasattr(tokenizer, "save"):
        tokenizer.save(_OUT.value)
    print(f"[export] step {step} of {workdir} -> {_OUT.value} (transformers: AutoModelForCausalLM.from_pretrained)")


def plot(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.train.plots import plot_run

    print(plot_run(_workdir(config), _OUT.value or ""))


def chat(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax import sharding
    from memtrain_jax.checkpoint.policy import load_policy
    from memtrain_jax.sampler import generate
    from memtrain_jax.tokenizer.chat import get_chat_format

    mesh = sharding.make_mesh(tuple(config.mesh_shape))
    rules = sharding.rules_from_config(config.axis_rules)
    print(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), mesh {dict(mesh.shape)}", flush=True)
    start = time.perf_counter()
    policy = load_policy(config.model, mesh, rules, seed=config.seed)
    chat_format = get_chat_format(config.chat_format or policy.chat_format)
    print(
        f"model: {policy.model_config.num_params() / 1e6:.1f}M parameters, {policy.model_config.num_layers} layers, "
        f"chat format {chat_format.name!r}, loaded in {time.perf_counter() - start:.1f}s",
        flush=True,
    )
    prompt = chat_format.encode(policy.tokenizer, [{"role": "user", "content": _PROMPT.value}])
    start = time.perf_counter()
    (result,) = generate(
        policy.model_config,
        policy.params,
        [prompt],
        max_new_tokens=_MAX_NEW.value,
        stop_tokens=chat_format.stop_tokens(policy.tokenizer),
        mesh=mesh,
        rules=rules,
    )
    seconds = time.perf_counter() - start
    reply = result.tokens[:-1] if result.stopped else result.tokens
    print(f"user: {_PROMPT.value}\nassistant: {policy.tokenizer.decode(reply)}")
    print(
        f"{len(result.tokens)} tokens in {seconds:.1f}s (compilation included), stopped on end token: {result.stopped}"
    )


def plan(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax import plan as planning

    name = _TOPOLOGY.value or config.get("topology")
    if not name:
        raise app.UsageError("plan needs --topology, a TPU slice such as v4-8, v5e-16, v5p-64 or v6e-8.")
    try:
        tpu = planning.parse_slice(name)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    start = time.perf_counter()
    if _ESTIMATE_ONLY.value:
        result = planning.estimate_plan(config, tpu.chips, target=tpu.name, hbm_bytes=tpu.hbm_bytes)
    else:
        devices = planning.topology_devices(tpu)
        result = planning.make_plan(config, devices, target=f"{tpu.name} ({tpu.topology})", hbm_bytes=tpu.hbm_bytes)
    print(planning.format_plan(result))
    print(f"({time.perf_counter() - start:.0f}s)")
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(result.to_json(), f, indent=1, default=float)
        print(f"plan: {_OUT.value}")


def _downstream(command: str, config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.tools import downstream

    workdir = _WORKDIR.value or os.path.join("runs", command)
    if command == "eval-search":
        task = "search_qa"
    elif config.get("task", "memtrain") == "search_qa":
        raise app.UsageError(f"{command} evaluates long-text QA; use a long-text config (not ...:search).")
    else:
        task = "long_qa"
    config = downstream.qa_config(
        config,
        task,
        qa_file=_QA_FILE.value,
        num_docs=_NUM_DOCS.value,
        limit=_LIMIT.value,
        baseline=_BASELINE.value,
    )
    if command == "eval-qa":
        downstream.eval_qa(config, workdir, plot=_PLOT.value)
    elif command == "eval-search":
        downstream.eval_search(config, workdir)
    else:
        downstream.compare(config, workdir, downstream.parse_arms(_ARMS.value), plot=_PLOT.value)


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "train"
    if command not in COMMANDS or len(argv) > 2:
        raise app.UsageError(f"Usage: memtrain [{'|'.join(COMMANDS)}] [--flags]; got {argv[1:]}.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every step at INFO.
    if _DISTRIBUTED.value:
        from memtrain_jax.tools import cluster

        try:
            cluster.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        logging.warning(
            "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
        )
    if command in ("eval-qa", "eval-search", "compare"):
        _downstream(command, _CONFIG.value)
        return
    commands = {"train": train, "eval": evaluate, "export": export, "plot": plot, "chat": chat, "plan": plan}
    commands[command](_CONFIG.value)


def run() -> None:
    """Console entry point (`memtrain`)."""
    app.run(main)


if __name__ == "__main__":
    run()
