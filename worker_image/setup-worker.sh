#!/usr/bin/env bash
# Cumulus worker setup: turn a fresh Debian/Ubuntu host into a Cumulus worker. Run as root, from a copy of the
# repository's worker_image/ directory (it installs the sibling files cumulus-partition-holder,
# cumulus-chronos-available and inventory.py):
#
#   worker_image/setup-worker.sh --manager 10.0.0.5:2377 --token SWMTKN-1-... \
#       --supervisor-key "ssh-ed25519 AAAA... supervisor"
#
# Steps (each one checks first and only changes what is missing, so a second run changes nothing):
#   packages  apt packages that are missing (docker.io, openssh-server, Chronos build deps, OpenCL ICD loader,
#             PoCL when no GPU OpenCL driver is installed)
#   docker    Docker engine installed and running (skipped with --skip-docker or --docker-host)
#   nvidia    on NVIDIA hosts: NVIDIA container runtime made dockerd's default runtime
#   chronos   real Chronos built from the PyPI sdist into /opt/cumulus/venv; fails loudly in stub mode
#   user      non-root user `cumulus` (key login only, trivial shell rc), supervisor key in authorized_keys,
#             /var/lib/cumulus/jobs owned by it
#   tools     /opt/cumulus/bin/cumulus-partition-holder, /opt/cumulus/bin/cumulus-chronos-available,
#             /opt/cumulus/bin/cumulus-job-network, /opt/cumulus/lib/inventory.py
#   join      docker swarm join as a worker (skipped with --skip-join, or when already in a swarm)
#   isolation job containers (docs/design.md, "Job isolation"): dockerd runs with no default bridge (so a job
#             with network="none" has only loopback) and --no-new-privileges (set in /etc/docker/daemon.json and
#             dockerd restarted; only checked with --docker-host/--skip-docker); the config-only Docker network
#             cumulus-jobs-config (--job-subnet, bridge cumulus-jobs) that the supervisor's Swarm network
#             cumulus-jobs uses on this host; the egress filter of that bridge (cumulus-job-network apply, in
#             the dockerd's network namespace). The supervisor checks the result when the worker registers.
#   inventory GPU inventory (nvidia-smi, else the OpenCL devices Chronos sees) + SSH address + host key, written as
#             JSON to --output (default /etc/cumulus/worker.json); the manager turns it into node labels:
#             python3 /opt/cumulus/lib/inventory.py label-command /etc/cumulus/worker.json
set -euo pipefail

PREFIX=/opt/cumulus
CHRONOS_VERSION=1.1.0
MANAGER=""
TOKEN=""
SUPERVISOR_KEYS=()
SKIP_DOCKER=0
SKIP_CHRONOS=0
SKIP_JOIN=0
SKIP_APT=0
SSH_ADDRESS=""
DOCKER_HOST_ARG=""
JOB_SUBNET=10.213.254.0/24
JOB_DENY=()
ADVERTISE_ADDR=""
OUTPUT=/etc/cumulus/worker.json
HOSTNAME_ARG=""
HOST_KEY_FILE=/etc/ssh/ssh_host_ed25519_key.pub
USER_NAME=cumulus
CHRONOS_PY=""
QUIET=0

usage() {
    cat <<'EOF'
usage: setup-worker.sh [--manager ADDR:2377 --token TOKEN | --token-file FILE] [--supervisor-key "ssh-ed25519 ..."]...
                       [--supervisor-key-file FILE] [--ssh-address HOST:PORT] [--ssh-user NAME] [--docker-host URL]
                       [--advertise-addr ADDR] [--hostname NAME] [--host-key-file FILE] [--output PATH]
                       [--skip-docker] [--skip-chronos] [--skip-join] [--skip-apt]
                       [--chronos-python PATH] [--chronos-version V] [--job-subnet CIDR] [--job-deny CIDR]...
                       [--job-allow ADDR:PORT]...
                       [--quiet]

  --manager ADDR:PORT      Swarm manager to join (with --token, a *worker* join token)
  --token-file FILE        read the Swarm join token from FILE (keeps it out of this script's command line)
  --supervisor-key KEY     public key allowed to log in as the SSH user (repeatable)
  --ssh-user NAME          the user the supervisor logs in as (default cumulus)
  --ssh-address HOST:PORT  address the supervisor reaches this host's sshd at (default: first IP of `hostname -I`:22)
  --docker-host URL        talk to this Docker daemon (e.g. unix:///run/x/docker.sock); implies the daemon is
                           managed elsewhere, so Docker is neither installed, started nor reconfigured
  --advertise-addr ADDR    Swarm advertise/listen address (default: the host part of --ssh-address)
  --hostname NAME          host name recorded in the worker JSON (default: hostname)
  --host-key-file FILE     sshd host public key recorded for pinning (default /etc/ssh/ssh_host_ed25519_key.pub)
  --output PATH            worker JSON path (default /etc/cumulus/worker.json)
  --skip-docker            Docker is already installed and running; do not touch it
  --skip-chronos           Chronos is already installed (still verified: real, not stub mode)
  --chronos-python PATH    python that imports the installed Chronos (default /opt/cumulus/venv/bin/python3)
  --skip-join              do not join a Swarm
  --skip-apt               never run apt-get (fail if something is missing)
  --job-subnet CIDR        subnet of the job bridge cumulus-jobs (default 10.213.254.0/24; any private range
                           unused on this host; every worker may use the same one)
  --job-deny CIDR          another IPv4 range jobs must not reach (repeatable), e.g. the public address of the
                           supervisor or of other workers; private, link-local and this host's addresses always are
  --job-allow ADDR:PORT    TCP to this IPv4 address and port passes the filter (repeatable): a private package index
                           of jobs.package_indexes, which the requirements installer must reach (jobs reach it too)
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --manager) MANAGER="$2"; shift 2 ;;
        --token) TOKEN="$2"; shift 2 ;;
        --token-file) TOKEN="$(cat "$2")"; shift 2 ;;
        --ssh-user) USER_NAME="$2"; shift 2 ;;
        --supervisor-key) SUPERVISOR_KEYS+=("$2"); shift 2 ;;
        --supervisor-key-file) SUPERVISOR_KEYS+=("$(cat "$2")"); shift 2 ;;
        --ssh-address) SSH_ADDRESS="$2"; shift 2 ;;
        --docker-host) DOCKER_HOST_ARG="$2"; shift 2 ;;
        --advertise-addr) ADVERTISE_ADDR="$2"; shift 2 ;;
        --hostname) HOSTNAME_ARG="$2"; shift 2 ;;
        --host-key-file) HOST_KEY_FILE="$2"; shift 2 ;;
        --output) OUTPUT="$2"; shift 2 ;;
        --skip-docker) SKIP_DOCKER=1; shift ;;
        --skip-chronos) SKIP_CHRONOS=1; shift ;;
        --skip-join) SKIP_JOIN=1; shift ;;
        --skip-apt) SKIP_APT=1; shift ;;
        --chronos-python) CHRONOS_PY="$2"; shift 2 ;;
        --chronos-version) CHRONOS_VERSION="$2"; shift 2 ;;
        --job-subnet) JOB_SUBNET="$2"; shift 2 ;;
        --job-deny) JOB_DENY+=(--deny "$2"); shift 2 ;;
        --job-allow) JOB_DENY+=(--allow "$2"); shift 2 ;;
        --quiet) QUIET=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup-worker: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

SRC_DIR="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
CHRONOS_PY="${CHRONOS_PY:-$PREFIX/venv/bin/python3}"
TAG="setup-worker${HOSTNAME_ARG:+[$HOSTNAME_ARG]}"
CHANGED=()

log() { [[ $QUIET == 1 ]] || echo "$TAG: $*" >&2; }
die() { echo "$TAG: ERROR: $*" >&2; exit 1; }
changed() { CHANGED+=("$1"); log "$1: changed${2:+ ($2)}"; }
ok() { log "$1: ok${2:+ ($2)}"; }

[[ $(id -u) == 0 ]] || die "must run as root"
[[ "$USER_NAME" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--ssh-user: $USER_NAME is not a valid user name"
for f in cumulus-partition-holder cumulus-chronos-available cumulus-job-network inventory.py; do
    [[ -f "$SRC_DIR/$f" ]] || die "missing $SRC_DIR/$f (run this script from a copy of the worker_image/ directory)"
done
if [[ -n "$MANAGER" && -z "$TOKEN" && $SKIP_JOIN == 0 ]]; then die "--manager needs --token"; fi
if [[ -z "$SSH_ADDRESS" ]]; then
    first_ip="$(hostname -I 2>/dev/null | awk '{print $1}')"
    SSH_ADDRESS="${first_ip:-$(hostname)}:22"
fi
if [[ -z "$ADVERTISE_ADDR" ]]; then ADVERTISE_ADDR="${SSH_ADDRESS%:*}"; fi
if [[ -n "$DOCKER_HOST_ARG" ]]; then export DOCKER_HOST="$DOCKER_HOST_ARG"; SKIP_DOCKER=1; fi

# Steps that touch shared host state run under one lock: the local cluster runs this script for several
# "hosts" (network namespaces) that share one filesystem, possibly at the same time.
mkdir -p /var/lock
exec 9>/var/lock/cumulus-setup-worker.lock
flock 9

# ---------------------------------------------------------------- packages
pkg_missing() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    echo "${missing[@]:-}"
}
has_gpu_opencl_icd() {
    # an OpenCL vendor ICD other than PoCL (e.g. nvidia.icd) means a GPU OpenCL driver exists
    local f
    for f in /etc/OpenCL/vendors/*.icd; do
        [[ -e "$f" ]] || continue
        grep -qi pocl "$f" || return 0
    done
    return 1
}
WANT=(openssh-server ca-certificates)
[[ $SKIP_DOCKER == 1 ]] || command -v dockerd >/dev/null || WANT+=(docker.io)
if [[ $SKIP_CHRONOS == 0 ]]; then
    WANT+=(python3 python3-venv python3-dev g++ cmake make ocl-icd-opencl-dev opencl-headers clinfo)
    has_gpu_opencl_icd || WANT+=(pocl-opencl-icd)
fi
# shellcheck disable=SC2207
MISSING=($(pkg_missing "${WANT[@]}"))
if [[ ${#MISSING[@]} -gt 0 ]]; then
    [[ $SKIP_APT == 0 ]] || die "missing packages and --skip-apt given: ${MISSING[*]}"
    log "packages: installing ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${MISSING[@]}" >/dev/null
    changed packages "${MISSING[*]}"
else
    ok packages
fi

# ---------------------------------------------------------------- docker
docker_up() { docker info >/dev/null 2>&1; }
if [[ $SKIP_DOCKER == 1 ]]; then
    if [[ -n "$DOCKER_HOST_ARG" ]]; then
        docker_up || die "docker daemon at $DOCKER_HOST_ARG is not reachable"
        ok docker "external daemon $DOCKER_HOST_ARG"
    else
        ok docker skipped
    fi
elif docker_up; then
    ok docker
else
    if [[ -d /run/systemd/system ]]; then
        systemctl enable --now docker >/dev/null
    elif command -v service >/dev/null && [[ -x /etc/init.d/docker ]]; then
        service docker start >/dev/null
    else
        nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do docker_up && break; sleep 0.5; done
    docker_up || die "dockerd did not come up"
    changed docker started
fi

# ---------------------------------------------------------------- nvidia container runtime
if command -v nvidia-smi >/dev/null && [[ -z "$DOCKER_HOST_ARG" && $SKIP_DOCKER == 0 ]]; then
    if ! command -v nvidia-container-runtime >/dev/null; then
        [[ $SKIP_APT == 1 ]] || apt-get install -y -q nvidia-container-toolkit >/dev/null 2>&1 || true
    fi
    if command -v nvidia-container-runtime >/dev/null; then
        before="$(cat /etc/docker/daemon.json 2>/dev/null || true)"
        if command -v nvidia-ctk >/dev/null; then
            nvidia-ctk runtime configure --runtime=docker --set-as-default >/dev/null
        else
            mkdir -p /etc/docker
            python3 - <<'PY'
import json, os
p = "/etc/docker/daemon.json"
d = json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else {}
d.setdefault("runtimes", {})["nvidia"] = {"path": "nvidia-container-runtime", "runtimeArgs": []}
d["default-runtime"] = "nvidia"
open(p, "w").write(json.dumps(d, indent=2) + "\n")
PY
        fi
        if [[ "$before" != "$(cat /etc/docker/daemon.json)" ]]; then
            if [[ -d /run/systemd/system ]]; then systemctl restart docker; else
                log "nvidia: restart dockerd yourself to apply /etc/docker/daemon.json"; fi
            changed nvidia "default runtime nvidia"
        else
            ok nvidia
        fi
    else
        log "nvidia: WARNING nvidia-container-toolkit not installable (add NVIDIA's apt repository); GPU jobs will not see GPUs"
    fi
fi

# ---------------------------------------------------------------- chronos
chronos_ok() {
    "$CHRONOS_PY" - "$CHRONOS_VERSION" "$1" >/dev/null 2>&1 <<'PY'
import sys, chronos
want, check_version = sys.argv[1], sys.argv[2] == "1"
sys.exit(0 if not chronos.is_stub_mode() and (not check_version or chronos.__version__ == want) else 1)
PY
}
if [[ $SKIP_CHRONOS == 1 ]]; then
    [[ -x "$CHRONOS_PY" ]] || die "--skip-chronos: $CHRONOS_PY not found (use --chronos-python)"
    chronos_ok 0 || die "Chronos at $CHRONOS_PY is missing or in STUB MODE (native library not loaded)"
    ok chronos skipped
elif chronos_ok 1; then
    ok chronos "chronos-gpu $CHRONOS_VERSION"
else
    [[ -x "$PREFIX/venv/bin/python3" ]] || /usr/bin/python3 -m venv "$PREFIX/venv"
    log "chronos: building chronos-gpu==$CHRONOS_VERSION from the sdist"
    "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check --no-binary chronos-gpu "chronos-gpu==$CHRONOS_VERSION" >&2
    chronos_ok 1 || die "Chronos is in STUB MODE after building from source: no usable OpenCL (check clinfo)"
    changed chronos "chronos-gpu $CHRONOS_VERSION"
fi
# Chronos writes /tmp/chronos_locks/<id>.lock; holders run as $USER_NAME, so the directory must be shared.
if [[ "$(stat -c %a /tmp/chronos_locks 2>/dev/null)" != 1777 ]]; then
    mkdir -p /tmp/chronos_locks && chmod 1777 /tmp/chronos_locks
    changed chronos-locks /tmp/chronos_locks
fi
if [[ -d /etc/tmpfiles.d && ! -f /etc/tmpfiles.d/cumulus-chronos.conf ]]; then
    echo "d /tmp/chronos_locks 1777 root root -" >/etc/tmpfiles.d/cumulus-chronos.conf
    changed tmpfiles
fi

# ---------------------------------------------------------------- user
if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash --user-group "$USER_NAME"
    changed user "created $USER_NAME"
fi
HOME_DIR="$(getent passwd "$USER_NAME" | cut -d: -f6)"
# useradd leaves the account locked ("!"); sshd without PAM refuses locked accounts even for key login.
if [[ "$(getent shadow "$USER_NAME" | cut -d: -f2)" != "*" ]]; then
    usermod -p '*' "$USER_NAME"
    changed user "unlocked for key login"
fi
put_file() { # put_file PATH MODE OWNER CONTENT -> changed only if different
    local path="$1" mode="$2" owner="$3" content="$4"
    if [[ ! -f "$path" || "$(cat "$path")" != "$content" ]]; then
        printf '%s\n' "$content" >"$path"
        CHANGED+=("$path")
        log "file: changed $path"
    fi
    [[ "$(stat -c %a "$path")" == "$mode" ]] || chmod "$mode" "$path"
    [[ "$(stat -c %U:%G "$path")" == "$owner" ]] || chown "$owner" "$path"
}
# A heavy rc costs ~100 ms per SSH command: keep it trivial.
put_file "$HOME_DIR/.bashrc" 644 "$USER_NAME:$USER_NAME" "# cumulus worker: intentionally trivial (every SSH command sources this)"
put_file "$HOME_DIR/.profile" 644 "$USER_NAME:$USER_NAME" "# cumulus worker: intentionally trivial"
rm -f "$HOME_DIR/.bash_logout"
install -d -m 700 -o "$USER_NAME" -g "$USER_NAME" "$HOME_DIR/.ssh"
AUTH="$HOME_DIR/.ssh/authorized_keys"
touch "$AUTH"
for key in "${SUPERVISOR_KEYS[@]}"; do
    [[ -n "$key" ]] || continue
    # the same key with another comment is the same key (a key sent without its comment is not added twice)
    if ! awk '{print $1 " " $2}' "$AUTH" | grep -qxF -- "$(awk '{print $1 " " $2}' <<<"$key")"; then
        printf '%s\n' "$key" >>"$AUTH"
        changed authorized_keys "${key:0:40}..."
    fi
done
[[ "$(stat -c %a "$AUTH")" == 600 ]] || chmod 600 "$AUTH"
[[ "$(stat -c %U "$AUTH")" == "$USER_NAME" ]] || chown "$USER_NAME:$USER_NAME" "$AUTH"
if [[ ! -d /var/lib/cumulus/jobs || "$(stat -c %U /var/lib/cumulus/jobs)" != "$USER_NAME" ]]; then
    install -d -m 755 /var/lib/cumulus
    install -d -m 755 -o "$USER_NAME" -g "$USER_NAME" /var/lib/cumulus/jobs
    changed jobs-dir /var/lib/cumulus/jobs
fi
ok user "$USER_NAME"

# ---------------------------------------------------------------- tools
install -d -m 755 "$PREFIX/bin" "$PREFIX/lib"
install_tool() { # install_tool SRC DEST (python shebang rewritten to $CHRONOS_PY)
    local src="$1" dest="$2" tmp
    tmp="$(mktemp)"
    sed "1s|^#!.*python.*$|#!$CHRONOS_PY|" "$src" >"$tmp"
    if ! cmp -s "$tmp" "$dest"; then
        install -m 755 "$tmp" "$dest"
        changed tools "$dest"
    fi
    rm -f "$tmp"
}
install_tool "$SRC_DIR/cumulus-partition-holder" "$PREFIX/bin/cumulus-partition-holder"
install_tool "$SRC_DIR/cumulus-chronos-available" "$PREFIX/bin/cumulus-chronos-available"
install_tool "$SRC_DIR/cumulus-job-network" "$PREFIX/bin/cumulus-job-network"
install_tool "$SRC_DIR/inventory.py" "$PREFIX/lib/inventory.py"
ok tools "$PREFIX/bin"

flock -u 9   # the rest is per host (per Docker daemon / output file)

# ---------------------------------------------------------------- join
SWARM_STATE="$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)"
if [[ $SKIP_JOIN == 1 ]]; then
    ok join "skipped (swarm state: $SWARM_STATE)"
elif [[ "$SWARM_STATE" == active ]]; then
    ok join "already in a swarm"
elif [[ -z "$MANAGER" ]]; then
    log "join: not in a swarm and no --manager given; skipping"
else
    docker swarm join --token "$TOKEN" --advertise-addr "$ADVERTISE_ADDR" \
        --listen-addr "$ADVERTISE_ADDR:2377" "$MANAGER" >/dev/null
    changed join "joined $MANAGER"
fi
NODE_ID="$(docker info --format '{{.Swarm.NodeID}}' 2>/dev/null || true)"

# ---------------------------------------------------------------- isolation
# The filter goes into the network namespace of the dockerd that runs the jobs: with --docker-host unix://PATH
# that is the namespace of the dockerd whose command line names PATH (the local cluster runs one per namespace),
# else this one.
DOCKER_NS=()
DOCKERD_PID=""
if [[ "${DOCKER_HOST_ARG:-}" == unix://* ]]; then
    for pid in $(pgrep -x dockerd || true); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "${DOCKER_HOST_ARG#unix://}"; then
            DOCKERD_PID="$pid"
            [[ "$(stat -L -c %i "/proc/$pid/ns/net")" == "$(stat -L -c %i /proc/self/ns/net)" ]] \
                || DOCKER_NS=(nsenter "--net=/proc/$pid/ns/net")
            break
        fi
    done
elif [[ -z "${DOCKER_HOST_ARG:-}" ]]; then
    DOCKERD_PID="$(pgrep -xo dockerd || true)"
fi
dockerd_no_new_privileges() {
    # Docker 20.10's `docker info` does not list it: read the daemon's command line and config file instead.
    docker info --format '{{json .SecurityOptions}}' | grep -q no-new-privileges && return 0
    [[ -n "$DOCKERD_PID" ]] || return 1
    local args config=/etc/docker/daemon.json
    args="$(tr '\0' '\n' <"/proc/$DOCKERD_PID/cmdline")"
    grep -qx -- '--no-new-privileges\(=true\)\?' <<<"$args" && return 0
    grep -qx -- '--no-new-privileges=false' <<<"$args" && return 1
    config="$(grep -A1 -x -- '--config-file' <<<"$args" | tail -n 1 | grep -v -- '^--config-file$' || echo "$config")"
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("no-new-privileges") is True else 1)' \
        "$config" 2>/dev/null
}
JOB_NET_TOOL=("${DOCKER_NS[@]}" "$PREFIX/bin/cumulus-job-network")
"${JOB_NET_TOOL[@]}" clear >/dev/null   # until every check below passes, the supervisor sends no jobs here
if [[ $SKIP_DOCKER == 0 ]]; then
    before="$(cat /etc/docker/daemon.json 2>/dev/null || true)"
    mkdir -p /etc/docker
    python3 - <<'PY'
import json, os
p = "/etc/docker/daemon.json"
d = json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else {}
d["bridge"] = "none"             # no default bridge: a job with network="none" gets loopback only
d["no-new-privileges"] = True    # Swarm API < 1.44 cannot ask for it per service
open(p, "w").write(json.dumps(d, indent=2) + "\n")
PY
    if [[ "$before" != "$(cat /etc/docker/daemon.json)" ]]; then
        if [[ -d /run/systemd/system ]]; then systemctl restart docker; else
            service docker restart >/dev/null 2>&1 || die "restart dockerd yourself to apply /etc/docker/daemon.json"; fi
        for _ in $(seq 1 60); do docker_up && break; sleep 0.5; done
        changed isolation "daemon.json: bridge none, no-new-privileges"
    fi
fi
docker network inspect bridge >/dev/null 2>&1 \
    && die "isolation: dockerd has a default bridge: run it with --bridge=none (\"bridge\": \"none\" in daemon.json) so that network=\"none\" jobs have no network"
dockerd_no_new_privileges \
    || die "isolation: dockerd does not run with --no-new-privileges (\"no-new-privileges\": true in daemon.json)"
have_subnet="$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' cumulus-jobs-config 2>/dev/null || true)"
if [[ -z "$have_subnet" ]]; then
    docker network create --config-only --subnet "$JOB_SUBNET" \
        -o com.docker.network.bridge.name=cumulus-jobs -o com.docker.network.bridge.enable_icc=false \
        cumulus-jobs-config >/dev/null
    changed isolation "config-only network cumulus-jobs-config $JOB_SUBNET"
elif [[ "$have_subnet" != "$JOB_SUBNET" ]]; then
    die "isolation: network cumulus-jobs-config has subnet $have_subnet, not $JOB_SUBNET (remove it when no job runs: docker network rm cumulus-jobs-config)"
fi
net_msg="$("${JOB_NET_TOOL[@]}" apply "${JOB_DENY[@]}")" || die "isolation: cumulus-job-network apply failed"
"${JOB_NET_TOOL[@]}" check >/dev/null || die "isolation: the filter check fails after apply"
ok isolation "$net_msg"

# ---------------------------------------------------------------- inventory
INV_ARGS=(detect --ssh-address "$SSH_ADDRESS" --ssh-user "$USER_NAME" --host-key-file "$HOST_KEY_FILE" --output "$OUTPUT")
[[ -n "$HOSTNAME_ARG" ]] && INV_ARGS+=(--hostname "$HOSTNAME_ARG")
[[ -n "$NODE_ID" ]] && INV_ARGS+=(--swarm-node-id "$NODE_ID")
[[ -n "$DOCKER_HOST_ARG" ]] && INV_ARGS+=(--docker-host "$DOCKER_HOST_ARG")
inv_msg="$("$CHRONOS_PY" "$PREFIX/lib/inventory.py" "${INV_ARGS[@]}" 2>&1)" || die "inventory failed: $inv_msg"
case "$inv_msg" in wrote*) changed inventory "$OUTPUT" ;; *) ok inventory "$OUTPUT" ;; esac

if [[ ${#CHANGED[@]} -eq 0 ]]; then log "done: nothing changed"; else log "done: ${#CHANGED[@]} change(s)"; fi
echo "$OUTPUT"
