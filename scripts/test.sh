#!/usr/bin/env bash
# Run the whole test suite: unit tests, then the real local cluster (brought up if needed; needs root).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not cluster" for the fast unit tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra --durations=30 "$@"
