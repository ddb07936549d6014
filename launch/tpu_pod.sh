#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM pod: create the pod (or reuse it), copy this
# checkout to every worker, install, and run the same main command on all of
# them (one JAX process per host; jax.distributed.initialize() finds the pod).
#
#   TPU_NAME=kgmae-v4 ZONE=us-central2-b ACCELERATOR=v4-32 NUM_HOSTS=4 \
#     launch/tpu_pod.sh --config configs/karma_enmap.py --workdir /mnt/shared/runs/karma
#
# DRY_RUN=1 (or --dry-run as the first argument) prints the commands instead.
# Environment: TPU_NAME, ZONE, ACCELERATOR (v4-32), VERSION (TPU VM image),
# PROJECT (optional), NUM_HOSTS (hosts in the slice; sets
# KGMAE_EXPECTED_PROCESSES so a missing host fails fast), REMOTE_DIR.
# --workdir must be one POSIX path every host sees (an NFS / Filestore mount,
# the same on every worker): orbax writes one checkpoint from all processes
# together. Object-store URLs (gs://) are refused here and by the run itself
# (kgmae_jax/workdir.py: the run lock, metrics.jsonl appends and TensorBoard
# need a file system); mount the storage and pass the mount point.
set -euo pipefail

DRY_RUN=${DRY_RUN:-0}
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -eq 0 ]]; then
  echo "usage: [DRY_RUN=1] $0 [--dry-run] --config CONFIG --workdir WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
prev=""
for a in "$@"; do  # Refuse an object-store workdir before creating anything.
  if [[ "$a" == --workdir=*://* || ( "$prev" == --workdir && "$a" == *://* ) ]]; then
    echo "error: --workdir must be a mounted path shared by all hosts, not an object-store URL (${a#--workdir=}); see docs/scaling.md." >&2
    exit 2
  fi
  prev=$a
done
TPU_NAME=${TPU_NAME:-kgmae-pod}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-kgmae_jax}
NUM_HOSTS=${NUM_HOSTS:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARBALL=${TMPDIR:-/tmp}/kgmae_jax_code.tgz

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
if [[ -n "${PROJECT:-}" ]]; then WHERE+=(--project "$PROJECT"); fi

run() {  # Prints the command (shell-quoted); runs it unless DRY_RUN=1.
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

# 1. Create the pod unless it exists.
if [[ "$DRY_RUN" == 1 ]] || ! "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  [[ "$DRY_RUN" == 1 ]] && echo "# (created only if 'gcloud compute tpus tpu-vm describe $TPU_NAME' fails)"
  run "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" \
      --accelerator-type "$ACCELERATOR" --version "$VERSION"
else
  echo "# Reusing TPU VM $TPU_NAME in $ZONE."
fi

# 2. Copy the code (tracked files, no .git) to every worker.
run tar -czf "$TARBALL" -C "$ROOT" --exclude=.git --exclude=runs --exclude='*.pyc' .
run "${GCLOUD[@]}" scp "$TARBALL" "$TPU_NAME:~/kgmae_jax_code.tgz" "${WHERE[@]}" --worker=all

# 3. Install on every worker.
INSTALL="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/kgmae_jax_code.tgz -C ~/$REMOTE_DIR"
INSTALL+=" && cd ~/$REMOTE_DIR && pip install -q -U 'jax[tpu]' && pip install -q -e '.[test]'"
run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command "$INSTALL"

# 4. The same main command on every worker.
ENVS="KGMAE_DISTRIBUTED=1"
if [[ -n "$NUM_HOSTS" ]]; then ENVS+=" KGMAE_EXPECTED_PROCESSES=$NUM_HOSTS"; fi
ARGS=$(printf ' %q' "$@")
run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all \
    --command "cd ~/$REMOTE_DIR && $ENVS python -m kgmae_jax.main$ARGS"
