"""`memtrain [COMMAND] [--config configs/memtrain.py:VARIANT] [--workdir DIR] [--config.a.b=value ...]`.

Commands:
  train (default)  MemTrain: GRPO training of the memory agent (resumes from the latest checkpoint in DIR);
                   prints held-out accuracy and reward before, after the format warm-up and after GRPO, with
                   95 % intervals and paired differences (GRPO's own effect: after - warm-up)
  eval             evaluates a checkpoint of DIR (latest, or --step N) on the held-out episodes
  export           writes a checkpoint's policy as a HuggingFace safetensors folder (--out OUT)
  plot             writes DIR/curves.png from the run's metrics
  chat             one chat reply from the policy (--prompt TEXT): is the model loaded right?
  eval-qa          long-text QA by context length: --qa-file FILE (HotpotQA/SQuAD JSON or JSONL; default the
                   dev set prepared from the pool) --num-docs 50,200 --limit N [--baseline] [--plot]; the model is
                   the config's, or a run's latest checkpoint with --config.init_from=RUN; writes DIR/results.json
  eval-search      search QA (MEM1's loop, two questions an episode) over the pool: --limit N
  compare          the paper's Table 1: the base model and each --arms name=RUN on the same long-text QA set
  compare-runs     MemTrain runs as arms (--runs name=RUN[@STEP],...) on the same held-out episodes, from their
                   eval records: figures with 95 % intervals and paired differences to the first run
  plan             --topology v5p-64: compiles the config's train step and rollout programs for that TPU slice on
                   this machine (libtpu, no TPU) and prints per-chip memory, FLOPs and whether it fits;
                   --estimate_only: the closed-form estimate alone (no libtpu)

With no arguments, `memtrain` trains configs/memtrain.py:cpu: the real SmolLM2-135M-Instruct on the
shipped Wikipedia pool, on this CPU, in a few minutes. `memtrain help COMMAND` (or `memtrain COMMAND --help`)
lists a command's flags. Config files are found from the working directory or in the package's configs/.

Exit codes: 0 done; 1 failed (one line, e.g. a full disk; a traceback for a bug); 2 refused (bad flags, config,
files or workdir: one or two lines, `--verbose` for the traceback); 75 stopped by SIGTERM (preemption) after
saving a checkpoint: run the same command to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from memtrain_jax import host_memory
from memtrain_jax.config import (
    CONFIGS_DIR,
    RUN_CHOICES,
    UsageError,
    flatten,
    load_config,
    migrate_tree,
    resolve_config_path,
    unknown_field_message,
)

EXIT_FAILED, EXIT_USAGE = 1, 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving; launch/tpu_vm.sh --resume-loop restarts it
_COMMON = ("config", "workdir", "verbose", "distributed", "coordinator", "num_processes", "process_id")
# command -> (summary, its own flags besides _COMMON)
COMMANDS = {
    "train": (
        "GRPO training of the memory agent; resumes from the latest checkpoint in --workdir",
        ("allow_config_change",),
    ),
    "eval": (
        "evaluates a checkpoint of --workdir (latest readable, or --step N) on the held-out episodes; --samples K: "
        "K sampled answers per episode (avg@K); --probes P: greedy, P recall probes per episode; run choices such as "
        "--config.sampling.max_rows apply",
        ("step", "samples", "probes"),
    ),
    "diagnose": (
        "where a checkpoint's reward is lost, memory or answer: greedy held-out episodes (--limit, default 16); "
        "--overfit N: N GRPO steps on one fixed batch, that batch's and a fresh batch's rewards before and after; "
        "--direction plus,minus,random: the starting policy moved along the update, its reverse and a random step of "
        "its size, each evaluated (DIR/direction-ARM.json, arms of compare-runs)",
        ("step", "limit", "warmup", "overfit", "direction"),
    ),
    "export": (
        "writes a checkpoint's policy as a complete HuggingFace folder (--out, outside the run)",
        ("step", "out"),
    ),
    "plot": ("writes the run's curves as a PNG (--out, default WORKDIR/curves.png)", ("out",)),
    "chat": ("one chat reply from the config's policy: is the model loaded right?", ("prompt", "max_new_tokens")),
    "eval-qa": ("long-text QA by context length", ("qa-file", "num-docs", "limit", "baseline", "plot")),
    "eval-search": ("search QA (MEM1's loop) over the pool, by objectives an episode", ("objectives", "limit", "plot")),
    "compare": (
        "the paper's Table 1: the base model and each --arms name=RUN",
        ("arms", "qa-file", "num-docs", "objectives", "limit", "plot"),
    ),
    "compare-runs": (
        "MemTrain runs as arms on the same held-out episodes (their eval records): intervals, paired differences",
        ("runs",),
    ),
    "plan": (
        "compiles the run's programs for a TPU slice and prints memory and FLOPs per chip",
        ("topology", "estimate_only", "out"),
    ),
}

DEFAULT_CONFIG = os.path.join(CONFIGS_DIR, "memtrain.py:cpu")
_CONFIG = None  # the --config flag; defined by _parse_flags once the overrides in argv are known to be valid
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir).")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step for eval/export/diagnose (default: the latest; 0: the run's starting policy)."
)
_SAMPLES = flags.DEFINE_integer(
    "samples", None, "eval: K > 1 sampled trajectories per held-out episode, averaged (default: train.eval_samples)."
)
_PROBES = flags.DEFINE_integer(
    "probes",
    None,
    "eval: P > 1 recall probes per held-out episode, greedy, averaged (default: train.eval_probes).",
)
_OUT = flags.DEFINE_string("out", None, "Output folder of export / PNG of plot / JSON of plan.")
_PROMPT = flags.DEFINE_string(
    "prompt", "Tell me about Paris, the capital of France, in three sentences.", "chat prompt."
)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "chat reply budget.")
_QA_FILE = flags.DEFINE_string("qa-file", None, "eval-qa/compare: a HotpotQA JSON, SQuAD JSON or JSONL file.")
_NUM_DOCS = flags.DEFINE_list("num-docs", None, "eval-qa/compare: context lengths in documents, e.g. 50,200.")
_OBJECTIVES = flags.DEFINE_list(
    "objectives", None, "eval-search/compare (search config): questions joined into one episode, e.g. 1,2."
)
_LIMIT = flags.DEFINE_integer(
    "limit", None, "eval-qa/eval-search/compare: the first N questions (0 = all); diagnose: held-out episodes."
)
_DIRECTION = flags.DEFINE_list(
    "direction",
    None,
    "diagnose: held-out evaluations of the starting policy + the update (plus), - it (minus), + a random step of its "
    "norm per tensor (random); ARM:S scales the step (plus:0.25).",
)
_OVERFIT = flags.DEFINE_integer(
    "overfit", None, "diagnose: N GRPO steps on one fixed batch; its and a fresh batch's rewards before and after."
)
_WARMUP = flags.DEFINE_bool("warmup", False, "diagnose: also the greedy replies to the format warm-up's own examples.")
_BASELINE = flags.DEFINE_bool("baseline", False, "eval-qa: also the full-context reader on the same questions.")
_PLOT = flags.DEFINE_bool("plot", False, "eval-qa / compare: write DIR/qa_accuracy.png / compare_accuracy.png.")
_ARMS = flags.DEFINE_string(
    "arms", "", "compare: name=WORKDIR,... (each a training run of the same model; WORKDIR@STEP: that checkpoint)."
)
_RUNS = flags.DEFINE_list(
    "runs",
    [],
    "compare-runs: name=WORKDIR[@STEP] or name=WORKDIR/eval-STEP-kK.json (written by eval),... (the first is the "
    "reference; default step: the last evaluated).",
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "plan: the TPU slice, e.g. v4-8, v5e-16, v5p-64, v6e-8 (default: the config's `topology`)."
)
_ESTIMATE_ONLY = flags.DEFINE_bool("estimate_only", False, "plan: the closed-form estimate only (no compiler).")
_COMPILE_WORKERS = flags.DEFINE_integer(
    "compile_workers", 0, "plan: programs compiled side by side (0: one per host core; 1: one at a time)."
)
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
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "train: resume although settings other than run choices differ from the run's (recorded in its history).",
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of a refusal or failure.")


def _workdir(config: ml_collections.ConfigDict) -> str:
    return _WORKDIR.value or config.workdir


def _stored_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (eval/export read the run as it was)."""
    from memtrain_jax.train.workdir import CONFIG_FILE

    path = epath.Path(workdir) / CONFIG_FILE  # a local folder or gs://
    if not path.exists():
        raise UsageError(f"{path} not found: {workdir} is not a memtrain workdir (train first).")
    values = migrate_tree(json.loads(path.read_text(encoding="utf-8")))  # a run of older code reads as today's
    if "axis_rules" not in values:
        raise UsageError(f"{path} is not a memtrain run config (no axis_rules): was it overwritten?")
    values["axis_rules"] = tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in values["axis_rules"]
    )
    values["mesh_shape"] = tuple(values["mesh_shape"])
    return ml_collections.ConfigDict(values)


def _closing_table(workdir: str, config: ml_collections.ConfigDict, steps: int) -> str | None:
    """The run's held-out table from its eval records (so a resumed run shows it too): before training, after
    the format warm-up (the warm-up-only control arm) and after GRPO, with paired differences."""
    from memtrain_jax.tools import report
    from memtrain_jax.train.metrics import EVAL_FILE, METRICS_FILE, read_metrics

    records = {r["step"]: r for r in read_metrics(workdir, EVAL_FILE) if r.get("items")}
    if steps not in records or steps == 0:
        return None
    # eval_samples / eval_probes are run choices: pair only the evaluations of the last one's kind
    kind = report.eval_kind(records[steps])
    records = {s: r for s, r in records.items() if report.eval_kind(r) == kind}
    format_steps = int(config.train.format_steps)
    summary = {"before": records.get(0), "after": records[steps], "warmup": records.get(format_steps)}
    arms, differences = report.training_arms(summary, format_steps if 0 < format_steps < steps else 0)
    if len(arms) < 2:
        return None
    signal = report.grpo_signal(read_metrics(workdir, METRICS_FILE))  # why GRPO moved (or did not move) the figures
    return report.arms_table(
        arms,
        differences,
        answer_extractor=config.agent.answer_extractor,
        imr=bool(config.agent.imr),
        notes=[signal] if signal else [],
    )


def train(config: ml_collections.ConfigDict) -> int:
    from memtrain_jax.train import Trainer

    workdir = _workdir(config)
    start = time.perf_counter()
    with _refusals():
        trainer = Trainer(config, workdir, allow_config_change=_ALLOW_CHANGE.value)
    summary = trainer.train()
    if jax.process_index() != 0:  # every process trains; process 0 reports
        return EXIT_PREEMPTED if summary.get("preempted") else 0
    minutes = (time.perf_counter() - start) / 60
    from memtrain_jax import compile_cache

    print(f"\n[memtrain] {summary['steps']} steps in {workdir} ({minutes:.1f} min this run)")
    print(f"[memtrain] {compile_cache.describe()}")
    if summary.get("preempted"):
        saved = summary.get("checkpoint_step")
        if saved:
            print(
                f"[memtrain] stopped by SIGTERM after saving the checkpoint of step {saved}; run the same command "
                "to resume"
            )
        else:
            print("[memtrain] stopped by SIGTERM before any step was saved; run the same command to start again")
        return EXIT_PREEMPTED
    table = _closing_table(workdir, config, int(summary["steps"]))
    if table:
        print(table)
    print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}; TensorBoard: tensorboard --logdir {workdir}/tensorboard")
    print(f"curves: memtrain plot --workdir {workdir}; export: memtrain export --workdir {workdir} --out DIR")
    return 0


def _restored(workdir: str):
    """(trainer, step, state) of a run's checkpoint (--step, else the latest readable one); reads only."""
    from memtrain_jax.train import Trainer

    stored = _stored_config(workdir)
    for arg in sys.argv[1:]:  # run choices (how, not what, the run computes) given on the command line apply
        name = arg[len("--config.") :].split("=", 1)[0] if arg.startswith("--config.") else ""
        if name in RUN_CHOICES and name not in ("workdir",):
            *parents, leaf = name.split(".")
            node, given = stored, _CONFIG.value
            for part in parents:
                node, given = node[part], given[part]
            node[leaf] = given[leaf]
    with _refusals():
        trainer = Trainer(stored, workdir, writer=False)
    if _STEP.value == 0 and 0 not in trainer.checkpointer.steps():
        return trainer, 0, trainer.initial_state()  # the run's starting policy: its init_from, or the base model
    abstract = jax.eval_shape(trainer.initial_state)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, trainer.learner.state_shardings
    )
    step, state, _ = trainer.checkpointer.restore_state(abstract, _STEP.value)
    return trainer, step, state


def evaluate(config: ml_collections.ConfigDict) -> None:
    workdir = _workdir(config)
    trainer, step, state = _restored(workdir)
    metrics = trainer.evaluate(state.params, step, samples=_SAMPLES.value, probes=_PROBES.value)
    from memtrain_jax.tools.report import eval_suffix

    name = f"eval-{step}{eval_suffix(metrics)}.json"
    _report_evaluation(workdir, step, metrics, name)


def _report_evaluation(workdir: str, step: int, metrics: dict[str, Any], name: str) -> None:
    """Prints an evaluation's figures with intervals and writes it to WORKDIR/NAME (an arm of compare-runs)."""
    if jax.process_index() != 0:  # every process evaluates; process 0 reports and writes
        return
    from memtrain_jax import stats
    from memtrain_jax.tools.report import binary_item

    items = metrics.get("items", {})
    shown = []
    for key, value in metrics.items():
        if key in items:
            binary = key.startswith("acc") and binary_item(key, metrics)  # a mean of K or P: bootstrap interval
            mean, lo, hi, n = stats.mean_with_interval(items[key], binary=binary)
            shown.append(f"{key} {stats.format_interval(mean, lo, hi)} (n {n})")
        elif isinstance(value, float):
            shown.append(f"{key} {value:.3f}")
    print(f"[eval] {workdir} step {step}: " + ", ".join(shown))
    (epath.Path(workdir) / name).write_text(json.dumps({"step": step, **metrics}, indent=1))
    print(f"[eval] wrote {epath.Path(workdir) / name} (an arm of `memtrain compare-runs --runs name=THAT_FILE,...`)")


def diagnose(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.tools.diagnose import diagnose as report

    workdir = _workdir(config)
    if _OVERFIT.value is not None and _OVERFIT.value < 1:
        raise UsageError(f"--overfit needs N >= 1 GRPO steps, got {_OVERFIT.value}.")
    if _DIRECTION.value:
        from memtrain_jax.tools.diagnose import direction_params, parse_direction

        for arm in _DIRECTION.value:
            parse_direction(arm)  # refused before a model loads
        if jax.process_count() > 1:
            raise UsageError("--direction moves the parameters on the host: run it on one process, not --distributed.")
    trainer, step, state = _restored(workdir)
    if _DIRECTION.value:
        theta0 = trainer.initial_state().params  # the run's starting policy: its init_from, or the base model
        shardings = jax.tree.map(lambda p: p.sharding, theta0)
        start, end = jax.device_get((theta0, state.params))  # to the host once, not once an arm
        for arm in _DIRECTION.value:
            params = jax.device_put(direction_params(start, end, arm), shardings)
            print(f"[diagnose] {workdir}: the starting policy moved along step {step}'s update: {arm}")
            metrics = trainer.evaluate(params, step)
            _report_evaluation(workdir, step, metrics, f"direction-{arm.replace(':', '-')}.json")
        return
    if _OVERFIT.value is not None:
        from memtrain_jax.tools.diagnose import overfit, overfit_table

        with _refusals():
            _, result = overfit(trainer, state, _OVERFIT.value)
        if jax.process_index() == 0:
            print(
                f"[diagnose] {workdir} step {step}: {_OVERFIT.value} GRPO steps on the first batch of the run's "
                f"data stream (fixed), against its second batch (fresh)\n{overfit_table(result)}"
            )
        return
    episodes = _LIMIT.value or 16
    text = report(trainer, state.params, episodes, warmup=_WARMUP.value)
    if jax.process_index() == 0:
        print(f"[diagnose] {workdir} step {step}, the first {episodes} held-out episodes (greedy)\n{text}")


def compare_runs(config: ml_collections.ConfigDict) -> None:
    """MemTrain runs as arms on the same held-out episodes, from their eval records (no model is loaded): each
    arm's figures with intervals and every arm's paired difference to the first."""
    from memtrain_jax.tools import report

    specs = [s for s in _RUNS.value if s]
    if len(specs) < 2:
        raise UsageError("--runs needs at least two runs: name=WORKDIR[@STEP],name=WORKDIR[@STEP] ...")
    loaded = [report.run_arm(spec) for spec in specs]
    arms = [arm for arm, _ in loaded]
    differences = [(f"{arms[i][0]} - {arms[0][0]}", 0, i) for i in range(1, len(arms))]
    first = loaded[0][1]
    print(
        report.arms_table(
            arms,
            differences,
            answer_extractor=first["agent"]["answer_extractor"],
            imr=bool(first["agent"]["imr"]),
        )
    )


def export(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.checkpoint.export import export_hf, refuse_run_directory

    if not _OUT.value:
        raise UsageError("export needs --out DIR (the HuggingFace folder to write, outside the run directory).")
    refuse_run_directory(_OUT.value)  # before anything is loaded
    workdir = _workdir(config)
    trainer, step, state = _restored(workdir)
    setup = trainer.setup
    export_hf(setup.policy.model_config, jax.device_get(state.params), setup.tokenizer, setup.chat.name, _OUT.value)
    print(
        f"[export] step {step} of {workdir} -> {_OUT.value} (transformers: AutoModelForCausalLM / AutoTokenizer"
        f".from_pretrained; memtrain: --config.model.source=hf --config.model.path={_OUT.value})"
    )


def plot(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.train.plots import plot_run

    print(plot_run(_workdir(config), _OUT.value or ""))


def chat(config: ml_collections.ConfigDict) -> None:
    from memtrain_jax import compile_cache, sharding
    from memtrain_jax.checkpoint.policy import load_policy
    from memtrain_jax.sampler import generate
    from memtrain_jax.tokenizer.chat import get_chat_format

    compile_cache.enable(config.get("compilation_cache", ""))
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
        if _COMPILE_WORKERS.value < 0:
            raise app.UsageError(
                f"--compile_workers must be >= 0 (0 = one per host core), got {_COMPILE_WORKERS.value}."
            )
        result = planning.make_plan(
            config, devices, target=f"{tpu.name} ({tpu.topology})", hbm_bytes=tpu.hbm_bytes,
            compile_workers=_COMPILE_WORKERS.value,
        )  # fmt: skip
    result.prediction = planning.predict_step(
        config, result.model, result.shapes, result.mesh, tpu.peak_flops, tpu.hbm_bandwidth
    )
    print(planning.format_plan(result))
    print(f"({time.perf_counter() - start:.0f}s)")
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(result.to_json(), f, indent=1, default=float)
        print(f"plan: {_OUT.value}")


def _downstream(command: str, config: ml_collections.ConfigDict) -> None:
    from memtrain_jax.tools import downstream

    if _LIMIT.value is not None and _LIMIT.value < 0:
        raise UsageError(f"--limit must be >= 0 (0 = every question), got {_LIMIT.value}.")
    workdir = _WORKDIR.value or os.path.join("runs", command)
    search_config = config.get("task", "memtrain") == "search_qa"
    search = command == "eval-search" or (command == "compare" and search_config)
    if command == "eval-qa" and search_config:
        raise UsageError("eval-qa evaluates long-text QA; use a long-text config (not ...:search), or eval-search.")
    if _OBJECTIVES.value and not search:
        raise UsageError("--objectives sets search QA's lengths; use it with eval-search or a search config.")
    if _NUM_DOCS.value and search:
        raise UsageError("--num-docs sets long-text QA's lengths; search QA's are --objectives.")
    task = "search_qa" if search else "long_qa"
    arms = downstream.parse_arms(_ARMS.value) if command == "compare" else []  # before any model is loaded
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
        downstream.eval_search(config, workdir, _OBJECTIVES.value, plot=_PLOT.value)
    else:
        downstream.compare(config, workdir, arms, plot=_PLOT.value, objectives=_OBJECTIVES.value)


# ------------------------------------------------------------------------------------------------ the CLI


class _Refused(Exception):
    """A refusal raised while a command builds its run (config, files, workdir): printed as one line."""


# Errors that, raised while a command sets itself up, mean the user's input is wrong rather than the code.
_INPUT_ERRORS = (
    UsageError,
    app.UsageError,
    ValueError,
    KeyError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


@contextlib.contextmanager
def _refusals():
    """Inside: an input error becomes a _Refused (exit 2, one line) instead of a traceback."""
    try:
        yield
    except _Refused:
        raise
    except _INPUT_ERRORS as e:
        raise _Refused(_message(e)) from e


def _message(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(text):
        text = f"{text}: {error.filename}"
    return " ".join(str(text).split()) if len(str(text)) < 600 else str(text)[:600] + " ..."


def _flag_help(name: str) -> str:
    if name == "config":
        return f"  --{name:22s}Training config (path.py[:variant]) (default {DEFAULT_CONFIG})"
    flag = flags.FLAGS[name]
    default = "" if flag.default in (None, "", False) else f" (default {flag.default_as_str or flag.default})"
    return f"  --{name:22s}{flag.help}{default}"


def _help(command: str | None) -> str:
    if command in COMMANDS:
        summary, own = COMMANDS[command]
        lines = [f"usage: memtrain {command} [--flags]", "", f"{command}: {summary}.", "", "flags:"]
        lines += [_flag_help(n) for n in (*own, *_COMMON)]
        lines += ["  --config.SECTION.FIELD=VALUE  override one config field, e.g. --config.train.steps=20"]
        return "\n".join(lines)
    lines = ["usage: memtrain [COMMAND] [--flags]   (memtrain help COMMAND: a command's flags)", "", "commands:"]
    lines += [f"  {name:12s} {summary}" for name, (summary, _) in COMMANDS.items()]
    lines += ["", "flags of every command:"] + [_flag_help(n) for n in _COMMON]
    lines += ["", __doc__.split("Exit codes:")[1].join(["Exit codes:", ""]).strip()]
    return "\n".join(lines)


def _fail(message: str, code: int) -> None:
    print(f"memtrain: error: {message}", file=sys.stderr)
    sys.exit(code)


def _config_arg(argv: list[str]) -> tuple[int, str] | None:
    """(index, value) of the --config flag's file argument in argv."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return i, arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None


def _words(argv: list[str]) -> list[str]:
    """The arguments that are not flags or flag values (the command, `help COMMAND`)."""
    words, i = [], 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name = arg.lstrip("-")
            if "=" not in name and name in flags.FLAGS and not flags.FLAGS[name].boolean:
                i += 1  # `--flag value`: skip the value
        else:
            words.append(arg)
        i += 1
    return words


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with help for humans and one-line refusals of bad flags and unknown config fields.

    The --config flag is defined here, after its overrides are checked: ml_collections applies them to the config
    as it defines the flag, and an unknown field would be a traceback there.
    """
    global _CONFIG
    argv = list(argv)
    words = _words(argv)
    if words[:1] == ["help"]:
        print(_help(words[1] if len(words) > 1 else None))
        sys.exit(0)
    if {"-h", "--help", "-help", "--helpshort"} & set(argv):
        print(_help(words[0] if words else None))
        sys.exit(0)
    if words and words[0] not in COMMANDS:
        _fail(f"unknown command {words[0]!r}; commands: {', '.join(COMMANDS)} (memtrain --help).", EXIT_USAGE)
    found = _config_arg(argv)
    spec = found[1] if found else DEFAULT_CONFIG
    path, sep, variant = spec.partition(":")
    try:
        resolved = resolve_config_path(path) + sep + variant
        config = load_config(resolved)
    except Exception as e:  # noqa: BLE001 (any failure of the config file is the user's to fix)
        _fail(f"--config {spec}: {_message(e)}", EXIT_USAGE)
    if found:  # from the package's configs/ when not found from the working directory
        argv[found[0]] = resolved if argv[found[0]] == spec else f"--config={resolved}"
    fields = set(flatten(config))
    for arg in argv[1:]:
        if arg.startswith("--config."):
            name = arg[len("--config.") :].split("=", 1)[0]
            if name not in fields and not any(f.startswith(name + ".") for f in fields):
                _fail(f"{arg.split('=', 1)[0]}: {unknown_field_message(name, config)}", EXIT_USAGE)
    try:
        if _CONFIG is None:
            _CONFIG = config_flags.DEFINE_config_file(
                "config", DEFAULT_CONFIG, "Training config (path.py[:variant]).", lock_config=True
            )
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{_message(e)} (memtrain help {words[0] if words else 'train'} lists the flags)", EXIT_USAGE)
    except Exception as e:  # noqa: BLE001 (a config override that does not parse)
        _fail(_message(e), EXIT_USAGE)
    return argv


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "train"
    if command not in COMMANDS or len(argv) > 2:
        raise UsageError(f"expected one command of {', '.join(COMMANDS)}; got {' '.join(argv[1:])!r}.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every step at INFO.
    if _DISTRIBUTED.value:
        from memtrain_jax.tools import cluster

        try:
            cluster.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        except ValueError as e:
            raise UsageError(str(e)) from e
        logging.warning(
            "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
        )
    if command in ("eval-qa", "eval-search", "compare"):
        with _refusals():
            _downstream(command, _CONFIG.value)
        return 0
    commands = {
        "train": train,
        "eval": evaluate,
        "diagnose": diagnose,
        "export": export,
        "plot": plot,
        "chat": chat,
        "plan": plan,
        "compare-runs": compare_runs,
    }
    if command == "train":
        return train(_CONFIG.value)
    with _refusals():  # the other commands read; their errors of input are refusals throughout
        commands[command](_CONFIG.value)
    return 0


def _guarded_main(argv: list[str]) -> None:
    """`main`, with refusals as one line on stderr (exit 2) and a failed write as one line (exit 1); a traceback
    only for a bug or with --verbose."""
    from memtrain_jax.train.workdir import WriteFailedError

    try:
        code = main(argv)
    except (_Refused, UsageError, app.UsageError) as e:
        if _VERBOSE.value:
            traceback.print_exc()
        _fail(_message(e), EXIT_USAGE)
    except WriteFailedError as e:
        if _VERBOSE.value:
            traceback.print_exc()
        _fail(str(e), EXIT_FAILED)
    sys.exit(code)


def run() -> None:
    """Console entry point (`memtrain`)."""
    # Before any computation: see memtrain_jax/host_memory.py. `plan` only compiles, and one malloc arena would
    # serialise the compiler's threads.
    host_memory.retain_freed_memory(single_arena=sys.argv[1:2] != ["plan"])
    app.run(_guarded_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
