#!/usr/bin/env bash
# Install Cumulus for development into .venv (idempotent): the client, the server and the test tools.
# Run as root on a fresh Debian 12 (it installs python3 and venv with apt when missing), or as any user where
# python3 >= 3.11 with venv is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "setup: python3 with venv is missing: install python3-venv (as root)" >&2; exit 1; }
  echo "setup: installing python3 and python3-venv with apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  dpkg --configure -a  # finishes a dpkg run that was interrupted, which would refuse the install
  apt-get update -q && apt-get install -y -q --no-install-recommends python3 python3-venv python3-pip
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Cumulus needs Python >= 3.11; python3 is $(python3 --version 2>&1)" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "cumulus installed in $(pwd)/.venv ($(.venv/bin/cumulus --version))"
