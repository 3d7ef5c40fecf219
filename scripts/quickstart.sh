#!/usr/bin/env bash
# Install Cumulus, bring up a real local cluster (a Swarm manager and 2 SSH workers in network namespaces), and
# check it. Needs root on Debian 12 / Ubuntu. Tear down with: .venv/bin/cumulus local down
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/cumulus local up --workers "${CUMULUS_WORKERS:-2}"
.venv/bin/cumulus local status
