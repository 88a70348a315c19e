#!/usr/bin/env bash
# Sets up this checkout (pinned dependencies) and runs the whole pipeline on CPU in minutes: pretrain a tiny ELECTRA,
# fine-tune it on SST-2, evaluate on dev, export a Hugging Face folder, predict from it.
# Usage: bash scripts/quickstart.sh [--workdir=runs/quickstart] [--task=sst2] [--pretrain_steps=300] ...
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -c third_party/constraints.txt -e .
exec python -m electra_jax.quickstart "$@"
