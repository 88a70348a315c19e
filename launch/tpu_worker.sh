#!/usr/bin/env bash
# Per-worker bootstrap for a Cloud TPU VM: run on EVERY worker of the slice (gcloud ... ssh --worker=all).
#
#   bash launch/tpu_worker.sh electra_jax.train.pretrain --config=configs/pretrain.py:size=large \
#       --workdir=gs://BUCKET/electra_large --config.data.corpus=gs://BUCKET/corpus/*.txt \
#       --config.data.vocab_file=gs://BUCKET/vocab.txt
#
#   bash launch/tpu_worker.sh --setup        # only create the virtualenv (what `tpu_pod.sh setup` runs)
#
# Creates a virtualenv in ~/electra_venv on first use (pinned versions from third_party/constraints.txt plus
# jax[tpu]), then runs `python -m "$@"` from the repository root with ELECTRA_JAX_DISTRIBUTED=1, so that
# electra_jax.runtime.distributed calls jax.distributed.initialize() (JAX finds the other workers itself).
# Environment: VENV (default ~/electra_venv), EXTRA_PIP (more packages), PYTHON (default python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$HOME/electra_venv}"
PYTHON="${PYTHON:-python3}"

if [[ $# -lt 1 ]]; then
  echo "usage: $0 MODULE [FLAGS...]   e.g. $0 electra_jax.train.pretrain --config=... --workdir=..." >&2
  exit 2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[$(hostname)] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  JAX_VERSION="$(grep -E '^jax==' "$REPO/third_party/constraints.txt" | cut -d= -f3 | awk '{print $1}')"
  "$VENV/bin/pip" install -q -c "$REPO/third_party/constraints.txt" "jax[tpu]==${JAX_VERSION}" \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  "$VENV/bin/pip" install -q -c "$REPO/third_party/constraints.txt" -e "$REPO" ${EXTRA_PIP:-}
fi

if [[ "$1" == "--setup" ]]; then
  "$VENV/bin/python" -c "import jax, electra_jax; print('$(hostname): jax', jax.__version__)"
  exit 0
fi

cd "$REPO"
export ELECTRA_JAX_DISTRIBUTED=1
export TOKENIZERS_PARALLELISM=false
exec "$VENV/bin/python" -m "$@"
