#!/usr/bin/env bash
# Runs memtrain as N JAX processes on this machine: the multi-host set-up of a TPU pod, on one host.
#
#   launch/local.sh [--dry-run] [--devices-per-process D] [--port P] [--log-dir DIR] N -- MEMTRAIN ARGS...
#
# Starts N processes of `memtrain ARGS... --distributed --coordinator localhost:P --num_processes N
# --process_id i` (the same program launch/tpu_vm.sh runs on every TPU host), each with D fake CPU
# devices (XLA_FLAGS=--xla_force_host_platform_device_count=D; default 4) that exchange collectives over
# gloo. Process 0 writes to this terminal and DIR/process-0.log, process i to DIR/process-i.log (DIR
# defaults to ./runs/local-logs). When a process fails, the others are stopped and the exit status is
# the failed process's; its log's last lines are shown. Exit status 75 (memtrain stopped by SIGTERM after
# saving a checkpoint; every process stops at the same step) is not a failure: the others finish, and
# the launcher exits 75 so that a resume loop can tell a preemption from a finished run.
# --dry-run prints each process's command (shell-quoted, "+ " first) instead of running it.
#
# Example: two processes x four devices = one 8-device mesh:
#   launch/local.sh 2 -- train --config configs/memtrain.py:tiny --workdir runs/tiny-2proc
set -euo pipefail

usage() {
  local text
  text=$(sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "${BASH_SOURCE[0]}")
  if [ "$1" -eq 0 ]; then printf '%s\n' "$text"; else printf '%s\n' "$text" >&2; fi
  exit "$1"
}

die() {
  echo "launch/local.sh: $*" >&2
  exit 2
}

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

DRY_RUN=0
DEVICES=4
PORT=""
LOG_DIR="runs/local-logs"
[ $# -eq 0 ] && usage 2
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --devices-per-process) [ $# -ge 2 ] || die "--devices-per-process needs a value"
      is_count "$2" || die "--devices-per-process must be a positive integer, got '$2'"; DEVICES=$2; shift 2 ;;
    --port) [ $# -ge 2 ] || die "--port needs a value"
      [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 65535 ] || die "--port must be in 1..65535, got '$2'"
      PORT=$2; shift 2 ;;
    --log-dir) [ $# -ge 2 ] || die "--log-dir needs a value"; LOG_DIR=$2; shift 2 ;;
    --) die "the process count N comes before --" ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || die "missing the process count N"
is_count "$1" || die "the process count must be a positive integer, got '$1'"
N=$1
shift
[ $# -ge 1 ] && [ "$1" = "--" ] || die "memtrain arguments go after -- (e.g. $N -- train --config ...)"
shift
for arg in "$@"; do
  case "$arg" in
    --distributed|--coordinator*|--num_processes*|--process_id*) die "'$arg' is set by launch/local.sh itself" ;;
  esac
done

if [ -z "$PORT" ]; then  # a free port, chosen by the OS
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
fi
PYTHON=${PYTHON:-python3}

if [ "$DRY_RUN" -eq 1 ]; then
  for ((i = 0; i < N; i++)); do
    cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES" "$PYTHON" -m memtrain_jax.tools.main "$@"
      --distributed --coordinator "localhost:$PORT" --num_processes "$N" --process_id "$i")
    printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
  done
  exit 0
fi

mkdir -p "$LOG_DIR"
export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES"
declare -A PROCESS_OF
PIDS=()
for ((i = 0; i < N; i++)); do
  args=("$PYTHON" -m memtrain_jax.tools.main "$@" --distributed --coordinator "localhost:$PORT"
    --num_processes "$N" --process_id "$i")
  if [ "$i" -eq 0 ]; then
    "${args[@]}" > >(tee "$LOG_DIR/process-0.log") 2>&1 &
  else
    "${args[@]}" >"$LOG_DIR/process-$i.log" 2>&1 &
  fi
  PIDS+=("$!")
  PROCESS_OF[$!]=$i
done

stop_all() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap 'stop_all; exit 130' INT TERM

status=0
running=("${PIDS[@]}")
while [ ${#running[@]} -gt 0 ]; do
  finished=""
  rc=0
  wait -n -p finished "${running[@]}" || rc=$?
  remaining=()
  for pid in "${running[@]}"; do [ "$pid" = "$finished" ] || remaining+=("$pid"); done
  running=("${remaining[@]}")
  if [ "$rc" -eq 75 ]; then  # preempted (memtrain --help: exit codes): the others stop at the same step
    status=75
    continue
  fi
  if [ "$rc" -ne 0 ]; then
    i=${PROCESS_OF[$finished]:-?}
    echo "launch/local.sh: process $i exited with status $rc; stopping the others. Last lines of $LOG_DIR/process-$i.log:" >&2
    tail -n 20 "$LOG_DIR/process-$i.log" >&2 || true
    stop_all
    wait || true
    status=$rc
    break
  fi
done
exit "$status"
