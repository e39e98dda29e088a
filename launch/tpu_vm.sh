#!/usr/bin/env bash
# Creates, sets up, runs and deletes a Cloud TPU VM slice for memtrain, one process per host.
#
#   launch/tpu_vm.sh [--dry-run] [--project P] ACTION NAME ZONE [options] [-- MEMTRAIN ARGS...]
#
# Actions:
#   create NAME ZONE --accelerator TYPE [--version RUNTIME] [--queued] [--spot|--preemptible]
#       a TPU VM (gcloud compute tpus tpu-vm create) or, with --queued, a queued resource whose node is
#       NAME. TYPE: v4-N, v5litepod-N (or v5e-N), v5p-N, v6e-N. RUNTIME defaults by generation:
#       v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.
#   setup  NAME ZONE
#       copy this checkout (without runs/, cache/ and .git) to a fresh ~/memtrain_jax on every host and
#       pip-install it ('.[tpu]' and the assets).
#   run    NAME ZONE [--bucket gs://B] [--resume-loop --accelerator TYPE [--queued] [--spot|--preemptible]
#                    [--version RUNTIME] [--max-restarts N]] -- ARGS...
#       run `memtrain --distributed ARGS...` on every host, streamed and appended to ~/memtrain.log there.
#       --bucket gs://B: the workdir is gs://B/NAME when ARGS give no --workdir (gs:// workdirs pass through).
#       --resume-loop (spot / queued slices): when the run exits non-zero (e.g. NAME was PREEMPTED), delete
#       and re-create NAME, set it up and run again, up to N times (default 10); memtrain resumes from the
#       latest checkpoint of its --workdir, which must be a gs:// path (a re-created VM has a new disk).
#       memtrain's exit codes steer it: 75 (stopped by SIGTERM after saving a checkpoint) on a slice that is
#       still READY/ACTIVE runs memtrain again in place; 2 (a refusal: bad flags, config or workdir) stops
#       the loop at once, since a restart would be refused too; any other failure re-creates the slice.
#   logs   NAME ZONE [--worker N]     follow ~/memtrain.log of host N (default 0)
#   delete NAME ZONE [--queued]       delete the TPU VM, or with --queued the queued resource and its node
#
# Settings: the project is --project P, else $MEMTRAIN_PROJECT, else `gcloud config get-value project`
# (never asked of gcloud with --dry-run); the bucket is --bucket, else $MEMTRAIN_BUCKET.
# --dry-run (first) prints every gcloud command, shell-quoted and prefixed with "+ ", instead of running it.
# A missing or wrong setting stops the script before any gcloud command, with exit status 2.
#
# Examples:
#   launch/tpu_vm.sh create memtrain-v5p us-east5-a --accelerator v5p-64
#   launch/tpu_vm.sh setup  memtrain-v5p us-east5-a
#   launch/tpu_vm.sh run    memtrain-v5p us-east5-a -- --config configs/memtrain.py:paper --workdir gs://B/paper
#   launch/tpu_vm.sh logs   memtrain-v5p us-east5-a --worker 0
#   launch/tpu_vm.sh delete memtrain-v5p us-east5-a
#   launch/tpu_vm.sh create memtrain-v6e us-east5-b --accelerator v6e-64 --queued --spot
#   launch/tpu_vm.sh run memtrain-v6e us-east5-b --bucket gs://B --resume-loop --accelerator v6e-64 --queued \
#       --spot -- --config configs/memtrain.py:paper
#   launch/tpu_vm.sh --dry-run --project my-proj create memtrain-v5p us-east5-a --accelerator v5p-64
#
# Every host runs the same program; jax.distributed.initialize() (called by --distributed) finds the
# coordinator from the TPU metadata, and each host then feeds its own slice of the data.
set -euo pipefail

# Expanded by the shell on each TPU host, not here.
# shellcheck disable=SC2088
REMOTE_DIR='~/memtrain_jax'
# shellcheck disable=SC2088
REMOTE_LOG='~/memtrain.log'
ACTIONS='create|setup|run|logs|delete'
ACCEPTED='v4-N, v5litepod-N (alias v5e-N), v5p-N or v6e-N'
POLL_SECONDS=60
EXIT_REFUSED=2    # memtrain refused its input (memtrain --help: exit codes)
EXIT_PREEMPTED=75 # memtrain stopped on SIGTERM after saving a checkpoint

usage() {  # the header comment above, to stdout (--help) or stderr (no arguments)
  local text
  text=$(sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "${BASH_SOURCE[0]}")
  if [ "$1" -eq 0 ]; then printf '%s\n' "$text"; else printf '%s\n' "$text" >&2; fi
  exit "$1"
}

die() {  # a usage error: one line on stderr, exit status 2
  printf 'tpu_vm.sh: error: %s\n' "$*" >&2
  exit 2
}

note() {  # progress: a "# " comment on stdout in --dry-run, on stderr otherwise
  if [ "$dry_run" -eq 1 ]; then printf '# %s\n' "$*"; else printf 'tpu_vm.sh: %s\n' "$*" >&2; fi
}

cmd() {  # prints a command as "+ word word ..." (each word printf %q-quoted); runs it unless --dry-run
  local line
  printf -v line '%q ' "$@"
  if [ "$dry_run" -eq 1 ]; then
    printf '+ %s\n' "${line% }"
  else
    printf '+ %s\n' "${line% }" >&2
    "$@"
  fi
}

# ---------------------------------------------------------------------------------------------------------
# Arguments.

[ $# -gt 0 ] || usage 2
dry_run=0
project=${MEMTRAIN_PROJECT:-}
bucket=${MEMTRAIN_BUCKET:-}
bucket_from=MEMTRAIN_BUCKET
accelerator='' version='' queued=0 spot='' resume=0 max_restarts='' worker=''
margs=()
seen_dashdash=0

value_of() {  # value_of OPT "$@": the value of an option given as "--opt=V" or "--opt V"
  local opt=$1
  shift
  case $1 in
    *=*)
      [ -n "${1#*=}" ] || die "$opt needs a value"
      printf '%s' "${1#*=}"
      ;;
    *)
      if [ $# -lt 2 ] || [ -z "$2" ] || [ "$2" = -- ]; then die "$opt needs a value"; fi
      printf '%s' "$2"
      ;;
  esac
}

# Options before the action.
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage 0 ;;
    --dry-run)
      dry_run=1
      shift
      ;;
    --project | --project=*)
      project=$(value_of --project "$@")
      case $1 in *=*) shift ;; *) shift 2 ;; esac
      ;;
    -*) die "unknown option '$1' before the action (usage: tpu_vm.sh --help)" ;;
    *) break ;;
  esac
done

[ $# -gt 0 ] || die "missing action: expected $ACTIONS NAME ZONE"
action=$1
shift
case $action in
  create | setup | run | logs | delete) ;;
  *) die "unknown action '$action': expected $ACTIONS" ;;
esac
if [ $# -eq 0 ] || [[ $1 == -* ]]; then die "$action: missing NAME (the TPU VM / queued resource name)"; fi
name=$1
shift
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "invalid NAME '$name': lowercase letters, digits and hyphens"
if [ $# -eq 0 ] || [[ $1 == -* ]]; then die "$action: missing ZONE (e.g. us-east5-a)"; fi
zone=$1
shift
[[ $zone =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "invalid ZONE '$zone' (e.g. us-east5-a)"

case $action in
  create) allowed='--project --accelerator --version --queued --spot --preemptible' ;;
  setup) allowed='--project' ;;
  run)
    allowed='--project --bucket --resume-loop --max-restarts --accelerator --version --queued --spot --preemptible'
    ;;
  logs) allowed='--project --worker' ;;
  delete) allowed='--project --queued' ;;
esac

while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then
    [ "$action" = run ] || die "$action takes no memtrain arguments after --"
    seen_dashdash=1
    shift
    margs=("$@")
    break
  fi
  opt=${1%%=*}
  case $opt in
    -h | --help) usage 0 ;;
    -*)
      if [[ " $allowed " != *" $opt "* ]]; then
        hint=''
        [ "$action" != run ] || hint='; memtrain arguments go after --'
        die "unknown option '$opt' for $action (allowed: ${allowed// /, }$hint)"
      fi
      ;;
    *) die "unexpected argument '$1' for $action${allowed:+ (options: ${allowed// /, })}" ;;
  esac
  case $opt in
    --queued | --resume-loop | --spot | --preemptible) [ "$1" = "$opt" ] || die "$opt takes no value" ;;
  esac
  case $opt in
    --queued) queued=1 ;;
    --resume-loop) resume=1 ;;
    --spot | --preemptible)
      [ -z "$spot" ] || [ "$spot" = "$opt" ] || die "--spot and --preemptible exclude each other"
      spot=$opt
      ;;
    *)
      val=$(value_of "$opt" "$@")
      case $opt in
        --project) project=$val ;;
        --accelerator) accelerator=$val ;;
        --version) version=$val ;;
        --bucket) bucket=$val bucket_from=--bucket ;;
        --max-restarts) max_restarts=$val ;;
        --worker) worker=$val ;;
      esac
      if [ "$1" = "$opt" ]; then shift; fi
      ;;
  esac
  shift
done

# Accelerator type -> canonical type and the default runtime version of its generation.
if [ -n "$accelerator" ]; then
  case $accelerator in v5e-*) accelerator=v5litepod-${accelerator#v5e-} ;; esac
  [[ $accelerator =~ ^(v4|v5litepod|v5p|v6e)-[1-9][0-9]*$ ]] ||
    die "unknown accelerator '$accelerator': accepted forms are $ACCEPTED"
  case ${accelerator%%-*} in
    v4) default_version=tpu-ubuntu2204-base ;;
    v5litepod) default_version=v2-alpha-tpuv5-lite ;;
    v5p) default_version=v2-alpha-tpuv5 ;;
    v6e) default_version=v2-alpha-tpuv6e ;;
  esac
  version=${version:-$default_version}
fi
if [ "$queued" -eq 1 ] && [ "$spot" = --preemptible ]; then
  die "--preemptible is for plain TPU VMs; a queued resource takes --spot"
fi

case $action in
  create)
    [ -n "$accelerator" ] || die "create needs --accelerator TYPE ($ACCEPTED)"
    ;;
  logs)
    worker=${worker:-0}
    [[ $worker =~ ^[0-9]+$ ]] || die "--worker must be a host number (0, 1, ...), got '$worker'"
    ;;
  run)
    if [ "$seen_dashdash" -eq 0 ] || [ ${#margs[@]} -eq 0 ]; then
      die "run needs the memtrain arguments after -- (e.g. -- --config configs/memtrain.py:paper --workdir gs://B/run)"
    fi
    if [ -n "$bucket" ]; then
      [[ $bucket =~ ^gs://[^/]+ ]] || die "$bucket_from must be a gs:// bucket (gs://B[/prefix]), got '$bucket'"
    fi
    if [ "$resume" -eq 1 ]; then
      [ -n "$accelerator" ] || die "--resume-loop re-creates $name and needs --accelerator TYPE ($ACCEPTED)"
      max_restarts=${max_restarts:-10}
      [[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, got '$max_restarts'"
    else
      for opt in accelerator version max_restarts; do
        [ -z "${!opt}" ] || die "--${opt//_/-} is only used by run with --resume-loop"
      done
      [ -z "$spot" ] || die "$spot is only used by run with --resume-loop"
      [ "$queued" -eq 0 ] || die "--queued is only used by run with --resume-loop"
    fi
    # The workdir: ARGS' --workdir, else gs://BUCKET/NAME when a bucket is set.
    workdir='' prev=''
    for arg in "${margs[@]}"; do
      case $prev in --workdir | -workdir) workdir=$arg ;; esac
      case $arg in --workdir=* | -workdir=*) workdir=${arg#*=} ;; esac
      prev=$arg
    done
    if [ -z "$workdir" ] && [ -n "$bucket" ]; then
      workdir=${bucket%/}/$name
      margs+=(--workdir "$workdir")
    fi
    if [ "$resume" -eq 1 ] && [[ $workdir != gs://* ]]; then
      die "--resume-loop needs a gs:// workdir (a re-created VM starts with an empty disk):" \
        "--workdir gs://B/RUN after --, or --bucket gs://B"
    fi
    ;;
esac

# The project comes last: outside --dry-run it may take a gcloud call.
if [ -z "$project" ]; then
  [ "$dry_run" -eq 0 ] || die "no project: pass --project P or set MEMTRAIN_PROJECT (--dry-run never asks gcloud)"
  command -v gcloud >/dev/null || die "gcloud not found on PATH (https://cloud.google.com/sdk/docs/install)"
  project=$(gcloud config get-value project 2>/dev/null || true)
  if [ -z "$project" ] || [ "$project" = '(unset)' ]; then
    die "no project: pass --project P, set MEMTRAIN_PROJECT or run gcloud config set project P"
  fi
fi
[[ $project != -* ]] || die "invalid project '$project'"
if [ "$dry_run" -eq 0 ]; then
  command -v gcloud >/dev/null || die "gcloud not found on PATH (https://cloud.google.com/sdk/docs/install)"
fi

# ---------------------------------------------------------------------------------------------------------
# Commands. Each returns non-zero on the first failing gcloud call (also where errexit is off, in the loop).

ssh_workers() {  # ssh_workers WORKER REMOTE_COMMAND
  cmd gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --project "$project" --worker="$1" --command "$2"
}

create_resource() {
  local extra=()
  if [ "$queued" -eq 1 ]; then
    [ -z "$spot" ] || extra=(--spot)
    cmd gcloud compute tpus queued-resources create "$name" --node-id "$name" --zone "$zone" \
      --accelerator-type "$accelerator" --runtime-version "$version" --project "$project" ${extra[@]+"${extra[@]}"}
  else
    [ -z "$spot" ] || extra=("$spot")
    cmd gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
      --accelerator-type "$accelerator" --version "$version" --project "$project" ${extra[@]+"${extra[@]}"}
  fi
}

delete_resource() {
  if [ "$queued" -eq 1 ]; then
    cmd gcloud compute tpus queued-resources delete "$name" --zone "$zone" --project "$project" --force --quiet
  else
    cmd gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --project "$project" --quiet
  fi
}

resource_state() {  # ACTIVE, WAITING_FOR_RESOURCES, ... (queued) or READY, PREEMPTED, ... (TPU VM) on stdout
  if [ "$queued" -eq 1 ]; then
    cmd gcloud compute tpus queued-resources describe "$name" --zone "$zone" --project "$project" \
      --format='value(state.state)'
  else
    cmd gcloud compute tpus tpu-vm describe "$name" --zone "$zone" --project "$project" --format='value(state)'
  fi
}

wait_until_active() {  # a queued resource is usable once ACTIVE (a TPU VM create returns when READY)
  local state
  [ "$queued" -eq 1 ] || return 0
  if [ "$dry_run" -eq 1 ]; then
    resource_state
    note "(polled every ${POLL_SECONDS}s until ACTIVE)"
    return 0
  fi
  while :; do
    state=$(resource_state) || return
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED | SUSPENDING | DELETING) note "$name is $state, not ACTIVE" && return 1 ;;
    esac
    note "$name is ${state:-not listed yet}; waiting for ACTIVE"
    sleep "$POLL_SECONDS"
  done
}

setup_workers() {  # a fresh copy each time: a tarball of the checkout without runs, caches and git history
  local repo archive="/tmp/memtrain_jax-$name.tar.gz"
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return
  cmd tar -czf "$archive" -C "$repo" --exclude=./.git --exclude=./runs --exclude=./cache --exclude=./.whl . || return
  cmd gcloud compute tpus tpu-vm scp "$archive" "$name:$REMOTE_DIR.tar.gz" --zone "$zone" --project "$project" \
    --worker=all || return
  local unpack="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $REMOTE_DIR.tar.gz -C $REMOTE_DIR"
  local install="cd $REMOTE_DIR && python3 -m pip install -e '.[tpu]'"
  ssh_workers all "$unpack && $install && python3 -m pip install --no-deps -r requirements-assets.txt"
}

run_memtrain() {  # pipefail: the status is memtrain's, not tee's; pip's user installs land in ~/.local/bin
  local quoted
  # shellcheck disable=SC2016  # expanded on the worker
  local env='set -o pipefail; export PATH="$HOME/.local/bin:$PATH"'
  printf -v quoted '%q ' "${margs[@]}"
  ssh_workers all "$env; cd $REMOTE_DIR && memtrain --distributed ${quoted% } 2>&1 | tee -a $REMOTE_LOG"
}

recreate_and_run() {  # one restart of the resume loop: delete, create, wait, set up, run
  delete_resource || note "deleting $name failed (already gone?); creating it again"
  create_resource || return
  wait_until_active || return
  setup_workers || return
  run_memtrain
}

resume_loop() {
  local restarts=0 rc=0 rc_now state
  trap 'note "interrupted; $name is left as it is"; exit 130' INT TERM
  run_memtrain || rc=$?
  if [ "$dry_run" -eq 1 ]; then
    note "resume loop: if the run exits non-zero (e.g. $name PREEMPTED), check, re-create, set up and re-run:"
    resource_state
    recreate_and_run
    note "resume loop: would repeat up to $max_restarts times (--max-restarts $max_restarts)"
    return 0
  fi
  while [ "$rc" -ne 0 ]; do
    if [ "$rc" -eq "$EXIT_REFUSED" ]; then
      note "the run was refused (exit $rc: bad flags, config or workdir); not restarting"
      return "$rc"
    fi
    state=$(resource_state 2>/dev/null) || state='not found'
    if [ "$restarts" -ge "$max_restarts" ]; then
      note "giving up after $restarts restarts: the run exited $rc, $name is ${state:-unknown}"
      return "$rc"
    fi
    restarts=$((restarts + 1))
    rc_now=$rc
    rc=0
    if [ "$rc_now" -eq "$EXIT_PREEMPTED" ] && { [ "$state" = READY ] || [ "$state" = ACTIVE ]; }; then
      note "the run stopped on SIGTERM (exit $rc_now) and $name is $state: resuming in place, $restarts of $max_restarts"
      run_memtrain || rc=$?
    else
      note "the run exited $rc_now and $name is ${state:-unknown}: restart $restarts of $max_restarts"
      recreate_and_run || rc=$?
    fi
  done
  note "memtrain finished after $restarts restarts"
}

case $action in
  create)
    create_resource
    if [ "$queued" -eq 1 ] && [ "$dry_run" -eq 0 ]; then
      note "queued: run setup once 'gcloud compute tpus queued-resources describe $name --zone $zone' says ACTIVE"
    fi
    ;;
  setup) setup_workers ;;
  run)
    if [ "$resume" -eq 1 ]; then resume_loop; else run_memtrain; fi
    ;;
  logs) ssh_workers "$worker" "tail -n 100 -F $REMOTE_LOG" ;;
  delete) delete_resource ;;
esac
