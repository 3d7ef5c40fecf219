#!/usr/bin/env bash
# Install the Cumulus supervisor as a systemd service (deploy/systemd/cumulus-supervisor.service). Run as root on
# the Swarm manager, from a checkout of this repository:
#
#   sudo deploy/systemd/install.sh [--prefix /opt/cumulus-supervisor] [--python PY] [--wheels DIR]
#                                  [--cumulus PATH] [--no-start] [--root DIR]
#
#   --prefix DIR     where the virtual environment and the worker files go (default /opt/cumulus-supervisor)
#   --python PY      the interpreter of the virtual environment (default /usr/bin/python3; 3.11 or newer, not under
#                    /home or /root, which the service cannot see: ProtectHome=yes)
#   --wheels DIR     install from the wheels in DIR only (no index), e.g. those supervisor_image/build.sh made
#   --cumulus PATH   use this installed `cumulus` executable instead of making a virtual environment
#   --no-start       install and enable nothing in systemd (print the commands instead)
#   --root DIR       install below DIR instead of / (packaging, tests): no user is made, systemctl is not run
#
# What it does (each step checks first; running it again changes nothing and never overwrites settings or keys):
#   1. the system user and group cumulus-supervisor, in the docker group (the Docker socket);
#   2. PREFIX/venv with cumulus[server] (from a copy of this repository's sources), PREFIX/worker_image (the files
#      joining hosts fetch: cluster.worker_files);
#   3. /etc/cumulus (0755), /etc/cumulus/tls, /etc/cumulus/secrets (root only, 0700), and in it the keys that can
#      be made here: journal_key (encrypts secret env values in the journal) and admin_token (the admin's token);
#   4. /etc/cumulus/supervisor.yaml from deploy/systemd/supervisor.yaml if there is none (root:cumulus-supervisor
#      0640): edit its addresses and worker image;
#   5. /etc/systemd/system/cumulus-supervisor.service with ExecStart pointing at the cumulus it installed, checked
#      with `systemd-analyze verify`; then `systemctl daemon-reload` and `systemctl enable --now` when the TLS key,
#      the certificate, the SSH key and known_hosts are in place (else it says which are missing and starts nothing).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
prefix=/opt/cumulus-supervisor python=python3 wheels=""
[ -x /usr/bin/python3 ] && python=/usr/bin/python3 cumulus="" start=1 root=""
user="cumulus-supervisor"
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?}"; shift 2 ;;
    --python) python="${2:?}"; shift 2 ;;
    --wheels) wheels="${2:?}"; shift 2 ;;
    --cumulus) cumulus="${2:?}"; shift 2 ;;
    --no-start) start=0; shift ;;
    --root) root="$(realpath -m "${2:?}")"; shift 2 ;;
    -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || [ -n "$root" ] || die "run it as root (sudo)"
[ "$root" = / ] && root=""
etc="$root/etc/cumulus"
unit="$root/etc/systemd/system/cumulus-supervisor.service"

# 1. the user
if [ -z "$root" ]; then
  if ! getent passwd "$user" >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/cumulus-supervisor --no-create-home \
      --shell /usr/sbin/nologin "$user"
    say "made the system user $user"
  fi
  getent group docker >/dev/null || groupadd --system docker
  id -nG "$user" | tr ' ' '\n' | grep -qx docker || { usermod -aG docker "$user"; say "$user joins the docker group"; }
fi
group_or_root() { if [ -z "$root" ] && getent group "$user" >/dev/null; then echo "$user"; else echo root; fi; }

# 2. cumulus and the worker files
if [ -n "$cumulus" ]; then
  [ -x "$cumulus" ] || die "--cumulus $cumulus is not an executable"
  exe="$cumulus"
else
  venv="$root$prefix/venv"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python is older than 3.11 (--python)"
  real="$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')"
  case "$real" in
    /home/*|/root/*|/run/user/*) die "$python is $real: the service cannot run it there (ProtectHome=yes); give \
--python with a system interpreter, e.g. /usr/bin/python3 (Debian: apt-get install python3 python3-venv)" ;;
  esac
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  src="$(mktemp -d)"; trap 'rm -rf "$src"' EXIT
  cp "$repo/pyproject.toml" "$repo/README.md" "$src/"
  (cd "$repo" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - cumulus) | tar -C "$src" -xf -
  if [ -n "$wheels" ]; then
    "$venv/bin/python" -m pip install -q --no-index --find-links "$wheels" "cumulus[server]"
  else
    "$venv/bin/python" -m pip install -q "${src}[server]"
  fi
  exe="$prefix/venv/bin/cumulus"
  say "cumulus $("$venv/bin/cumulus" --version | awk '{print $2}') in $venv"
fi
mkdir -p "$root$prefix"
rm -rf "$root$prefix/worker_image.new"
(cd "$repo" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - worker_image) | \
  (mkdir -p "$root$prefix/worker_image.new" && tar -C "$root$prefix/worker_image.new" --strip-components=1 -xf -)
rm -rf "$root$prefix/worker_image" && mv "$root$prefix/worker_image.new" "$root$prefix/worker_image"

# 3. directories and the keys that can be made here
install -d -m 0755 "$etc" "$etc/tls"
install -d -m 0700 "$etc/secrets"
make_secret() {  # NAME PYTHON-EXPRESSION
  [ -s "$etc/secrets/$1" ] && return 0
  (umask 077 && "$python" -c "import base64, os, secrets; print($2)" > "$etc/secrets/$1.tmp")
  mv "$etc/secrets/$1.tmp" "$etc/secrets/$1"
  say "made $etc/secrets/$1"
}
make_secret journal_key 'base64.urlsafe_b64encode(os.urandom(32)).decode()'
make_secret admin_token '"cumulus_" + secrets.token_urlsafe(32)'

# 4. settings
if [ ! -e "$etc/supervisor.yaml" ]; then
  install -m 0640 -g "$(group_or_root)" "$here/supervisor.yaml" "$etc/supervisor.yaml"
  say "wrote $etc/supervisor.yaml: set grpc.listen and cluster.image"
fi

# 5. the unit
mkdir -p "$(dirname "$unit")"
sed "s#^ExecStart=/opt/cumulus-supervisor/venv/bin/cumulus #ExecStart=$exe #" "$here/cumulus-supervisor.service" \
  > "$unit.tmp"
grep -q "^ExecStart=$exe supervisor " "$unit.tmp" || die "could not set ExecStart in $unit"
chmod 0644 "$unit.tmp" && mv "$unit.tmp" "$unit"
say "wrote $unit (ExecStart=$exe supervisor --config /etc/cumulus/supervisor.yaml)"
if command -v systemd-analyze >/dev/null && [ -z "$root" ]; then
  systemd-analyze verify "$unit" || die "systemd-analyze verify $unit failed"
fi

missing=()
for f in tls/server.pem known_hosts secrets/tls_key secrets/ssh_key; do [ -s "$etc/$f" ] || missing+=("$etc/$f"); done
if [ "${#missing[@]}" -gt 0 ]; then
  say "still missing (then run: systemctl enable --now cumulus-supervisor): ${missing[*]}"
  exit 0
fi
if [ "$start" = 1 ] && [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now cumulus-supervisor.service
  say "started: systemctl status cumulus-supervisor; journalctl -u cumulus-supervisor"
else
  say "to start it: systemctl daemon-reload && systemctl enable --now cumulus-supervisor"
fi
