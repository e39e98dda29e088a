"""launch/tpu_vm.sh: the exact gcloud commands it prints with --dry-run, its usage errors, and the resume loop
run for real against a fake `gcloud` on PATH."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "launch/tpu_vm.sh"
ZONE = "us-east5-a"
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
QR = ["gcloud", "compute", "tpus", "queued-resources"]
INSTALL = (
    "cd ~/memtrain_jax && python3 -m pip install -e '.[tpu]'"
    " && python3 -m pip install --no-deps -r requirements-assets.txt"
)
RUN_PREFIX = 'set -o pipefail; export PATH="$HOME/.local/bin:$PATH"; cd ~/memtrain_jax && memtrain --distributed '
RUN_SUFFIX = " 2>&1 | tee -a ~/memtrain.log"


def sh(*args: str, project: str | None = "env-proj", bucket: str | None = None, path: str | None = None):
    """Runs the script with MEMTRAIN_PROJECT / MEMTRAIN_BUCKET set only as asked."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEMTRAIN_PROJECT", "MEMTRAIN_BUCKET", "PWD")}
    if project is not None:
        env["MEMTRAIN_PROJECT"] = project
    if bucket is not None:
        env["MEMTRAIN_BUCKET"] = bucket
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def dry(*args: str, **kwargs) -> list[str]:
    """The --dry-run output lines; the run must succeed quietly."""
    proc = sh("--dry-run", *args, **kwargs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith(("+ ", "# ")) for line in lines), lines
    return lines


def words(line: str) -> list[str]:
    """A printed command as bash would read it when pasted; shlex must agree with bash."""
    assert line.startswith("+ ")
    split = shlex.split(line[2:])
    proc = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + line[2:]], capture_output=True, text=True, check=True, timeout=30
    )
    assert proc.stdout.split("\0")[:-1] == split
    return split


def commands(lines: list[str]) -> list[list[str]]:
    return [words(line) for line in lines if line.startswith("+ ")]


def command_value(cmd: list[str]) -> str:
    assert cmd.count("--command") == 1
    return cmd[cmd.index("--command") + 1]


def ssh(name: str, worker: str, command: str, project: str = "env-proj") -> list[str]:
    return [*TPU, "ssh", name, "--zone", ZONE, "--project", project, f"--worker={worker}", "--command", command]


def run_command(name: str, margs: str, project: str = "env-proj") -> list[str]:
    return ssh(name, "all", RUN_PREFIX + margs + RUN_SUFFIX, project)


def setup_commands(name: str, project: str = "env-proj") -> list[list[str]]:
    archive = f"/tmp/memtrain_jax-{name}.tar.gz"
    tar = ["tar", "-czf", archive, "-C", str(REPO), "--exclude=./.git", "--exclude=./runs", "--exclude=./cache"]
    scp = [*TPU, "scp", archive, f"{name}:~/memtrain_jax.tar.gz", "--zone", ZONE, "--project", project]
    unpack = "rm -rf ~/memtrain_jax && mkdir -p ~/memtrain_jax && tar -xzf ~/memtrain_jax.tar.gz -C ~/memtrain_jax && "
    return [[*tar, "--exclude=./.whl", "."], [*scp, "--worker=all"], ssh(name, "all", unpack + INSTALL, project)]


# --- create -------------------------------------------------------------------------------------------------

CREATE_CASES = [
    ("v4-8", "v4-8", "tpu-ubuntu2204-base"),
    ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-64", "v5p-64", "v2-alpha-tpuv5"),
    ("v6e-8", "v6e-8", "v2-alpha-tpuv6e"),
]


@pytest.mark.parametrize(("given", "accelerator", "runtime"), CREATE_CASES)
def test_create_tpu_vm(given, accelerator, runtime):
    assert dry("create", "tpu-a", ZONE, "--accelerator", given) == [
        f"+ gcloud compute tpus tpu-vm create tpu-a --zone us-east5-a --accelerator-type {accelerator} "
        f"--version {runtime} --project env-proj"
    ]


@pytest.mark.parametrize(("given", "accelerator", "runtime"), CREATE_CASES)
def test_create_queued(given, accelerator, runtime):
    expected = (
        f"+ gcloud compute tpus queued-resources create tpu-q --node-id tpu-q --zone us-east5-a "
        f"--accelerator-type {accelerator} --runtime-version {runtime} --project env-proj"
    )
    assert dry("create", "tpu-q", ZONE, "--accelerator", given, "--queued") == [expected]
    assert dry("create", "tpu-q", ZONE, "--queued", f"--accelerator={given}", "--spot") == [expected + " --spot"]


def test_create_the_documented_example():
    proc = sh(
        "--dry-run", "--project", "my-proj", "create", "memtrain-v5p", ZONE, "--accelerator", "v5p-64", project=None
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == (
        "+ gcloud compute tpus tpu-vm create memtrain-v5p --zone us-east5-a --accelerator-type v5p-64 "
        "--version v2-alpha-tpuv5 --project my-proj\n"
    )


def test_create_version_spot_preemptible_and_project_flag():
    base = "+ gcloud compute tpus tpu-vm create t --zone us-east5-a --accelerator-type v6e-8"
    assert dry("create", "t", ZONE, "--accelerator", "v6e-8", "--version", "v2-alpha-tpuv6e-custom", "--spot") == [
        f"{base} --version v2-alpha-tpuv6e-custom --project env-proj --spot"
    ]
    assert dry("create", "t", ZONE, "--accelerator", "v6e-8", "--preemptible") == [
        f"{base} --version v2-alpha-tpuv6e --project env-proj --preemptible"
    ]
    # --project beats MEMTRAIN_PROJECT, before the action or among the options.
    assert dry("--project", "flag-proj", "create", "t", ZONE, "--accelerator", "v6e-8") == [
        f"{base} --version v2-alpha-tpuv6e --project flag-proj"
    ]
    assert dry("create", "t", ZONE, "--accelerator", "v6e-8", "--project=flag-proj", project=None) == [
        f"{base} --version v2-alpha-tpuv6e --project flag-proj"
    ]


# --- setup, run, logs, delete -------------------------------------------------------------------------------


def test_setup():
    assert commands(dry("setup", "tpu-a", ZONE)) == setup_commands("tpu-a")


def test_run_quotes_memtrain_args():
    margs = [
        "--config",
        "configs/memtrain.py:paper",
        "--workdir",
        "gs://bkt/runs/paper",
        '--config.note=it\'s "q" $HOME',
    ]
    lines = dry("run", "tpu-a", ZONE, "--", *margs)
    assert len(lines) == 1
    [cmd] = commands(lines)
    remote = command_value(cmd)
    assert cmd[:-1] == ssh("tpu-a", "all", "")[:-1]
    assert remote.startswith(RUN_PREFIX) and remote.endswith(RUN_SUFFIX)
    # The worker's shell gets back exactly the memtrain arguments.
    remote_words = shlex.split(remote)
    start = remote_words.index("memtrain")
    assert remote_words[start : start + 2 + len(margs)] == ["memtrain", "--distributed", *margs]
    assert remote_words[start + 2 + len(margs) :] == ["2>&1", "|", "tee", "-a", "~/memtrain.log"]
    echoed = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + remote[remote.index("memtrain --distributed") : -len(RUN_SUFFIX)]],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert echoed.stdout.split("\0")[:-1] == ["memtrain", "--distributed", *margs]


def test_run_bucket_gives_the_default_workdir():
    assert commands(dry("run", "tpu-a", ZONE, "--bucket", "gs://bkt/", "--", "--config", "c.py")) == [
        run_command("tpu-a", "--config c.py --workdir gs://bkt/tpu-a")
    ]
    assert commands(dry("run", "tpu-a", ZONE, "--", "train", bucket="gs://env-bkt")) == [
        run_command("tpu-a", "train --workdir gs://env-bkt/tpu-a")
    ]
    # An explicit --workdir (either form) wins over the bucket.
    for given in (["--workdir", "gs://other/w"], ["--workdir=gs://other/w"]):
        assert commands(dry("run", "tpu-a", ZONE, "--bucket", "gs://bkt", "--", *given)) == [
            run_command("tpu-a", " ".join(given))
        ]


def test_logs():
    tail = "tail -n 100 -F ~/memtrain.log"
    assert commands(dry("logs", "tpu-a", ZONE)) == [ssh("tpu-a", "0", tail)]
    assert commands(dry("logs", "tpu-a", ZONE, "--worker", "3")) == [ssh("tpu-a", "3", tail)]


def test_delete():
    assert dry("delete", "tpu-a", ZONE) == [
        "+ gcloud compute tpus tpu-vm delete tpu-a --zone us-east5-a --project env-proj --quiet"
    ]
    assert dry("delete", "tpu-a", ZONE, "--queued") == [
        "+ gcloud compute tpus queued-resources delete tpu-a --zone us-east5-a --project env-proj --force --quiet"
    ]


# --- the resume loop ----------------------------------------------------------------------------------------


def test_resume_loop_dry_run_queued():
    lines = dry(
        "run", "tpu-q", ZONE, "--resume-loop", "--accelerator", "v5e-16", "--queued", "--spot", "--max-restarts", "3",
        "--bucket", "gs://bkt", "--", "--config", "configs/memtrain.py:paper",
    )  # fmt: skip
    run = run_command("tpu-q", "--config configs/memtrain.py:paper --workdir gs://bkt/tpu-q")
    describe = [*QR, "describe", "tpu-q", "--zone", ZONE, "--project", "env-proj", "--format=value(state.state)"]
    create = [*QR, "create", "tpu-q", "--node-id", "tpu-q", "--zone", ZONE, "--accelerator-type", "v5litepod-16"]
    create += ["--runtime-version", "v2-alpha-tpuv5-lite", "--project", "env-proj", "--spot"]
    delete = [*QR, "delete", "tpu-q", "--zone", ZONE, "--project", "env-proj", "--force", "--quiet"]
    assert commands(lines) == [run, describe, delete, create, describe, *setup_commands("tpu-q"), run]
    notes = [line for line in lines if line.startswith("# ")]
    assert notes == [
        "# resume loop: if the run exits non-zero (e.g. tpu-q PREEMPTED), check, re-create, set up and re-run:",
        "# (polled every 60s until ACTIVE)",
        "# resume loop: would repeat up to 3 times (--max-restarts 3)",
    ]
    assert lines[-1] == notes[-1]


def test_resume_loop_dry_run_tpu_vm():
    lines = dry("run", "tpu-a", ZONE, "--resume-loop", "--accelerator", "v4-8", "--", "--workdir=gs://bkt/r")
    run = run_command("tpu-a", "--workdir=gs://bkt/r")
    describe = [*TPU, "describe", "tpu-a", "--zone", ZONE, "--project", "env-proj", "--format=value(state)"]
    delete = [*TPU, "delete", "tpu-a", "--zone", ZONE, "--project", "env-proj", "--quiet"]
    create = [*TPU, "create", "tpu-a", "--zone", ZONE, "--accelerator-type", "v4-8"]
    create += ["--version", "tpu-ubuntu2204-base", "--project", "env-proj"]
    assert commands(lines) == [run, describe, delete, create, *setup_commands("tpu-a"), run]
    assert lines[-1] == "# resume loop: would repeat up to 10 times (--max-restarts 10)"


FAKE_GCLOUD = r"""#!{python}
# A fake gcloud: logs its arguments; the run fails (and the resource is PREEMPTED) FAKE_FAILS times.
import json, os, sys
args = sys.argv[1:]
state_file, fails_file = os.environ["FAKE_STATE"], os.environ["FAKE_FAILS"]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
if args[:3] == ["config", "get-value", "project"]:
    print("gcloud-proj")
elif "describe" in args:
    state = open(state_file).read()
    if not state:
        sys.exit(1)
    print(state)
elif "create" in args:
    open(state_file, "w").write("ACTIVE" if "queued-resources" in args else "READY")
elif "delete" in args:
    open(state_file, "w").write("")
elif "ssh" in args and "memtrain --distributed" in args[-1]:
    codes = open(os.environ["FAKE_CODES"]).read()  # memtrain's exit codes, one a run, the slice staying up
    if codes:
        code, *rest = codes.split(",")
        open(os.environ["FAKE_CODES"], "w").write(",".join(rest))
        sys.exit(int(code))
    fails = int(open(fails_file).read())
    if fails:
        open(fails_file, "w").write(str(fails - 1))
        open(state_file, "w").write("PREEMPTED")
        sys.exit(255)
"""


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.replace("{python}", sys.executable))
    gcloud.chmod(0o755)
    for var, name in (("FAKE_LOG", "log"), ("FAKE_STATE", "state"), ("FAKE_FAILS", "fails"), ("FAKE_CODES", "codes")):
        (tmp_path / name).write_text("")
        monkeypatch.setenv(var, str(tmp_path / name))

    def run(*args: str, fails: int, queued: bool, codes: str = ""):
        (tmp_path / "fails").write_text(str(fails))
        (tmp_path / "codes").write_text(codes)
        (tmp_path / "log").write_text("")
        (tmp_path / "state").write_text("ACTIVE" if queued else "READY")
        proc = sh(*args, project=None, path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        calls = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
        return proc, calls

    return run


def test_resume_loop_recreates_after_preemption(fake_gcloud):
    args = ["run", "tpu-q", ZONE, "--resume-loop", "--accelerator", "v6e-8", "--queued", "--spot", "--"]
    proc, calls = fake_gcloud(*args, "--workdir", "gs://bkt/w", fails=2, queued=True)
    assert proc.returncode == 0, proc.stderr
    project = "gcloud-proj"  # neither --project nor MEMTRAIN_PROJECT: asked of gcloud
    run = run_command("tpu-q", "--workdir gs://bkt/w", project)[1:]
    describe = QR[1:] + ["describe", "tpu-q", "--zone", ZONE, "--project", project, "--format=value(state.state)"]
    delete = QR[1:] + ["delete", "tpu-q", "--zone", ZONE, "--project", project, "--force", "--quiet"]
    create = QR[1:] + ["create", "tpu-q", "--node-id", "tpu-q", "--zone", ZONE, "--accelerator-type", "v6e-8"]
    create += ["--runtime-version", "v2-alpha-tpuv6e", "--project", project, "--spot"]
    setup = [c[1:] for c in setup_commands("tpu-q", project) if c[0] == "gcloud"]
    restart = [describe, delete, create, describe, *setup, run]
    assert calls == [["config", "get-value", "project"], run, *restart, *restart]
    assert "the run exited 255 and tpu-q is PREEMPTED: restart 1 of 10" in proc.stderr
    assert "the run exited 255 and tpu-q is PREEMPTED: restart 2 of 10" in proc.stderr
    assert "memtrain finished after 2 restarts" in proc.stderr


def test_resume_loop_gives_up_after_max_restarts(fake_gcloud):
    args = ["run", "tpu-a", ZONE, "--resume-loop", "--accelerator", "v5p-8", "--max-restarts", "1", "--"]
    proc, calls = fake_gcloud(*args, "--workdir=gs://bkt/w", fails=5, queued=False)
    assert proc.returncode == 255
    assert [c[3] for c in calls[1:]] == ["ssh", "describe", "delete", "create", "scp", "ssh", "ssh", "describe"]
    assert (
        proc.stderr.splitlines()[-1] == "tpu_vm.sh: giving up after 1 restarts: the run exited 255, tpu-a is PREEMPTED"
    )


def test_resume_loop_follows_memtrains_exit_codes(fake_gcloud):
    """75 (SIGTERM, checkpoint saved) on a slice still READY: memtrain runs again in place, nothing re-created;
    2 (a refusal): the loop stops at once with that code."""
    args = ["run", "tpu-a", ZONE, "--resume-loop", "--accelerator", "v5p-8", "--"]
    proc, calls = fake_gcloud(*args, "--workdir=gs://bkt/w", fails=0, queued=False, codes="75,75")
    assert proc.returncode == 0, proc.stderr
    assert [c[3] for c in calls[1:]] == ["ssh", "describe", "ssh", "describe", "ssh"]
    assert "the run stopped on SIGTERM (exit 75) and tpu-a is READY: resuming in place, 2 of 10" in proc.stderr
    proc, calls = fake_gcloud(*args, "--workdir=gs://bkt/w", fails=0, queued=False, codes="2")
    assert proc.returncode == 2
    assert [c[3] for c in calls[1:]] == ["ssh"]
    assert proc.stderr.splitlines()[-1].endswith(
        "the run was refused (exit 2: bad flags, config or workdir); not restarting"
    )


# --- usage errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env_project", "message"),
    [
        (
            ["create", "t", ZONE, "--accelerator", "v4-8"],
            None,
            "no project: pass --project P or set MEMTRAIN_PROJECT (--dry-run never asks gcloud)",
        ),
        (
            ["create", "t", ZONE, "--accelerator", "v3-8"],
            "p",
            "unknown accelerator 'v3-8': accepted forms are v4-N, v5litepod-N (alias v5e-N), v5p-N or v6e-N",
        ),
        (
            ["create", "t", ZONE],
            "p",
            "create needs --accelerator TYPE (v4-N, v5litepod-N (alias v5e-N), v5p-N or v6e-N)",
        ),
        (["launch", "t", ZONE], "p", "unknown action 'launch': expected create|setup|run|logs|delete"),
        (
            ["run", "t", ZONE],
            "p",
            "run needs the memtrain arguments after -- (e.g. -- --config configs/memtrain.py:paper --workdir gs://B/run)",
        ),
        (
            ["run", "t", ZONE, "--"],
            "p",
            "run needs the memtrain arguments after -- (e.g. -- --config configs/memtrain.py:paper --workdir gs://B/run)",
        ),
        (["create"], "p", "create: missing NAME (the TPU VM / queued resource name)"),
        (["setup", "t"], "p", "setup: missing ZONE (e.g. us-east5-a)"),
        (["setup", "t", ZONE, "--bogus"], "p", "unknown option '--bogus' for setup (allowed: --project)"),
        ([], "p", "missing action: expected create|setup|run|logs|delete NAME ZONE"),
        (
            ["run", "t", ZONE, "--bucket", "bkt", "--", "x"],
            "p",
            "--bucket must be a gs:// bucket (gs://B[/prefix]), got 'bkt'",
        ),
        (
            ["run", "t", ZONE, "--resume-loop", "--", "--workdir", "gs://b/w"],
            "p",
            "--resume-loop re-creates t and needs --accelerator TYPE (v4-N, v5litepod-N (alias v5e-N), v5p-N or v6e-N)",
        ),
        (
            ["run", "t", ZONE, "--resume-loop", "--accelerator", "v5p-8", "--", "--workdir", "runs/w"],
            "p",
            "--resume-loop needs a gs:// workdir (a re-created VM starts with an empty disk): "
            "--workdir gs://B/RUN after --, or --bucket gs://B",
        ),
        (
            ["create", "t", ZONE, "--accelerator", "v5p-8", "--queued", "--preemptible"],
            "p",
            "--preemptible is for plain TPU VMs; a queued resource takes --spot",
        ),
        (["logs", "t", ZONE, "--worker", "x"], "p", "--worker must be a host number (0, 1, ...), got 'x'"),
    ],
)
def test_usage_errors(args, env_project, message):
    proc = sh("--dry-run", *args, project=env_project)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"tpu_vm.sh: error: {message}\n"


def test_errors_come_before_any_gcloud_call(fake_gcloud):
    proc, calls = fake_gcloud("create", "t", ZONE, "--accelerator", "v3-8", fails=0, queued=False)
    assert proc.returncode == 2 and "unknown accelerator 'v3-8'" in proc.stderr
    assert calls == []


def test_help_and_no_arguments():
    header = (REPO / SCRIPT).read_text().splitlines()[1:]
    header = [line[2:] if line.startswith("# ") else line[1:] for line in header[: header.index("set -euo pipefail")]]
    expected = "\n".join(header) + "\n"
    assert (
        "launch/tpu_vm.sh --dry-run --project my-proj create memtrain-v5p us-east5-a --accelerator v5p-64" in expected
    )
    for flag in ("-h", "--help"):
        proc = sh(flag)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, "")
    proc = sh()
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", expected)
