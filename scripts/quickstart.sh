#!/usr/bin/env bash
# Install Cumulus, bring up a real local cluster (a Swarm manager and 2 SSH workers in network namespaces, with a
# supervisor serving on 127.0.0.1:50051), and run the hello example on it: prints 4.
# Needs root on Debian 12 (it re-runs itself with sudo when started by another user and sudo exists).
# Safe to run again, also after an interrupted run. Tear down with: .venv/bin/cumulus local down
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "quickstart: run it as root (sudo is not installed)" >&2; exit 1; }
  exec sudo --preserve-env=CUMULUS_WORKERS,CUMULUS_DEBIAN_MIRROR bash "$0" "$@"
fi
bash scripts/setup.sh
.venv/bin/cumulus local up --workers "${CUMULUS_WORKERS:-2}"
.venv/bin/cumulus local status
.venv/bin/python examples/hello.py
