#!/usr/bin/env bash
# ELECTRA pretraining on a Cloud TPU pod slice, from your workstation (gcloud installed and authenticated).
#
#   export TPU_NAME=electra-large ZONE=us-central2-b ACCELERATOR=v4-64 BUCKET=gs://my-bucket
#   bash launch/tpu_pod.sh create            # the slice (RUNTIME defaults to tpu-ubuntu2204-base)
#   bash launch/tpu_pod.sh copy              # this repository to every worker (scp --worker=all)
#   bash launch/tpu_pod.sh setup             # virtualenv + pinned install on every worker
#   bash launch/tpu_pod.sh run --config=configs/pretrain.py:size=large --workdir=$BUCKET/electra_large \
#       --config.data.corpus=$BUCKET/corpus --config.data.vocab_file=$BUCKET/vocab.txt \
#       --config.data.cache_dir=$BUCKET/shards --config.mesh.fsdp=8
#   bash launch/tpu_pod.sh logs              # follow worker 0's log (WORKER=3 for another one)
#   bash launch/tpu_pod.sh stop              # SIGTERM on every worker: a checkpoint is saved, then the run exits
#   bash launch/tpu_pod.sh delete
#
# `run` starts the same command on every worker (never only worker 0: a pod waits for all of its hosts) through
# launch/tpu_worker.sh, detached with nohup, logging to ~/electra_pretrain.log on each worker. Running `run` again
# after a preemption or `stop` resumes from the latest complete checkpoint in --workdir. Put the workdir and the
# data cache on GCS so every worker sees the same files.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-electra_jax}"
LOG="electra_pretrain.log"

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

quote_args() {
  local out="" a
  for a in "$@"; do out+=" $(printf '%q' "$a")"; done
  echo "$out"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
        --version="$RUNTIME" ${CREATE_FLAGS:-}
    ;;
  copy)
    tar -C "$REPO" --exclude=.git --exclude='*.pyc' --exclude=runs --exclude='.venv*' -czf /tmp/electra_jax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/electra_jax.tgz "$TPU_NAME":~/electra_jax.tgz --zone="$ZONE" --worker=all
    ssh_all "mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf ~/electra_jax.tgz"
    ;;
  setup)
    ssh_all "cd ~/$REMOTE_DIR && bash launch/tpu_worker.sh --setup"
    ;;
  run)
    args="$(quote_args "$@")"
    ssh_all "cd ~/$REMOTE_DIR && nohup bash launch/tpu_worker.sh electra_jax.train.pretrain $args > ~/$LOG 2>&1 &"
    echo "started on every worker; follow with: bash $0 logs"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="${WORKER:-0}" --command="tail -n 100 -f ~/$LOG"
    ;;
  stop)
    ssh_all "pkill -TERM -f -- '-m electra_jax.train.pretrain' || true"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 {create|copy|setup|run FLAGS...|logs|stop|delete}   (see the header of this file)" >&2
    exit 2
    ;;
esac
