#!/usr/bin/env bash
# Install Cumulus for development into .venv (idempotent). Run from anywhere; needs python3 >= 3.10 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv python3-pip
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "cumulus installed in $(pwd)/.venv ($(.venv/bin/cumulus --version))"
