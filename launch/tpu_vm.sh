#!/usr/bin/env bash
# Runs one command on every host of a Cloud TPU VM slice, one process per host.
#
#   launch/tpu_vm.sh setup TPU_NAME ZONE            # copy this checkout to every host and install it
#   launch/tpu_vm.sh run   TPU_NAME ZONE -- ARGS... # run `memtrain --distributed ARGS...` on every host
#
# Every host runs the same program; jax.distributed.initialize() (called by --distributed)
# finds the coordinator from the TPU metadata, and each host then feeds its own slice of the data.
set -euo pipefail

usage() {
  sed -n '2,9p' "$0" >&2
  exit 2
}

[ $# -ge 3 ] || usage
action=$1 tpu=$2 zone=$3
shift 3
remote_dir='~/memtrain_jax'
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"
}

case "$action" in
  setup)
    repo=$(cd "$(dirname "$0")/.." && pwd)
    gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu":"$remote_dir" --zone "$zone" --worker=all
    ssh_all "cd $remote_dir && python3 -m pip install -e '.[tpu]' && python3 -m pip install --no-deps -r requirements-assets.txt"
    ;;
  run)
    [ "${1:-}" = "--" ] && shift
    args=$(printf '%q ' "$@")
    ssh_all "cd $remote_dir && memtrain --distributed $args"
    ;;
  *)
    usage
    ;;
esac
