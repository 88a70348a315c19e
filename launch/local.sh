#!/usr/bin/env bash
# ELECTRA pretraining on this machine (CPU, or the local GPUs/TPU chips).
#
#   bash launch/local.sh                                     # tiny preset, WikiText-2 from the data folder, runs/tiny
#   SIZE=small WORKDIR=runs/small bash launch/local.sh --config.data.corpus=/data/owt --config.data.vocab_file=v.txt
#   NPROC=2 bash launch/local.sh --config.num_train_steps=50  # 2 processes joined by jax.distributed (CPU collectives)
#   DRY_RUN=1 bash launch/local.sh                           # print the command(s) only
#
# Extra arguments go to the binary (--config.key=value overrides). Rerunning with the same WORKDIR resumes.
# NPROC > 1 starts that many processes on localhost with a coordinator on port $PORT (default 12355), each with
# $DEVICES_PER_PROC simulated CPU devices (default 2) when JAX_PLATFORMS=cpu; logs go to WORKDIR/process_<i>.log.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE="${SIZE:-tiny}"
WORKDIR="${WORKDIR:-$REPO/runs/$SIZE}"
NPROC="${NPROC:-1}"
PORT="${PORT:-12355}"
PYTHON="${PYTHON:-python}"
cd "$REPO"
export TOKENIZERS_PARALLELISM=false

cmd=("$PYTHON" -m electra_jax.train.pretrain "--config=configs/pretrain.py:size=$SIZE" "--workdir=$WORKDIR" "$@")

if [[ "$NPROC" -le 1 ]]; then
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
  exec "${cmd[@]}"
fi

if [[ "${JAX_PLATFORMS:-}" == "cpu" || -z "${JAX_PLATFORMS:-}" && -z "$(command -v nvidia-smi || true)" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROC:-2}"
fi
mkdir -p "$WORKDIR"
pids=()
for ((i = 0; i < NPROC; i++)); do
  proc=("${cmd[@]}" "--coordinator_address=localhost:$PORT" "--num_processes=$NPROC" "--process_id=$i")
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${proc[@]}"; echo; continue; fi
  "${proc[@]}" > "$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
[[ -n "${DRY_RUN:-}" ]] && exit 0
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
tail -n 5 "$WORKDIR/process_0.log"
exit "$status"
