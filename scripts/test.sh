#!/usr/bin/env bash
# Sets up this checkout (pinned dependencies, editable install, test extra) and runs the whole test suite on CPU.
# Usage: bash scripts/test.sh [pytest args]      (data: $ELECTRA_DATA_DIR, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -c third_party/constraints.txt -e ".[test]"
exec python -m pytest -q "$@"
