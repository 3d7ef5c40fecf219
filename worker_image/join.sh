#!/usr/bin/env bash
# Cumulus worker join: makes this host a worker of a Cumulus cluster in one command. The supervisor serves this
# script at https://SUPERVISOR/join/worker.sh; `cumulus worker join-command` prints the line that runs it, as root:
#
#   curl -fsSk --proto =https --pinnedpubkey 'sha256//PIN' https://SUPERVISOR/join/worker.sh \
#     | CUMULUS_JOIN_TOKEN='cumulus_join_...' bash -s -- --supervisor SUPERVISOR --pin 'sha256//PIN'
#
# Every request goes to the supervisor over HTTPS with its public key pinned (curl --pinnedpubkey; -k only skips
# the CA check, the pin is still enforced), so nothing is trusted on first use. Steps:
#   1. fetch the worker files (setup-worker.sh, inventory.py, the holder and helper scripts)
#   2. register this host (name, SSH address, SSH host key) with the join token: the answer is the Swarm join
#      token and manager, the supervisor's SSH public key and user, the image registry and its CA
#   3. install the registry's CA for dockerd (/etc/docker/certs.d/REGISTRY/ca.crt)
#   4. setup-worker.sh: installs what is missing (Docker, Chronos, ...), the SSH user with the supervisor's key,
#      joins the Swarm, writes the worker JSON (the GPU inventory)
#   5. complete the join with the Swarm node id and the worker JSON: the supervisor checks the node, pins the
#      host key registered in step 2, labels the node and makes it schedulable.
# Any failure prints `join: <message>` and exits 1. Running it again (with a new token) on a joined host works.
#
# The join token comes only from the environment variable CUMULUS_JOIN_TOKEN: it is never printed, never on a
# command line (curl reads the header from a mode 0600 file that is removed at exit), and not passed on to the
# commands this script runs.
#
# Options (each also from an environment variable; the defaults are what a real host has):
#   --supervisor HOST:PORT   the supervisor's HTTP port (required)
#   --pin sha256//BASE64     its public key pin (required)
#   --ssh-address HOST:PORT  where the supervisor reaches this host's sshd ($CUMULUS_JOIN_SSH_ADDRESS; default:
#                            the address this host reaches the supervisor from, port 22)
#   --advertise-addr ADDR    Swarm advertise address (default: the host part of the SSH address)
#   --hostname NAME          ($CUMULUS_JOIN_HOSTNAME; default: `hostname`)
#   --host-key-file FILE     the sshd's ed25519 host public key ($CUMULUS_JOIN_HOST_KEY_FILE; default
#                            /etc/ssh/ssh_host_ed25519_key.pub)
#   --worker-json PATH       where setup-worker.sh writes the worker JSON ($CUMULUS_JOIN_WORKER_JSON; default
#                            /etc/cumulus/worker.json)
#   --docker-host URL        a Docker daemon that is not at the default socket ($DOCKER_HOST): it is used as it
#                            is (setup-worker.sh --docker-host: not installed, started or reconfigured)
# Needs bash, curl, tar and python3 (installed with apt when missing); setup-worker.sh installs the rest.

RUN_THE_LINE="run the whole line that \`cumulus worker join-command\` printed"
log() { printf 'join [%3ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'join: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: CUMULUS_JOIN_TOKEN=cumulus_join_... join.sh --supervisor HOST:PORT --pin sha256//BASE64
           [--ssh-address HOST:PORT] [--advertise-addr ADDR] [--hostname NAME] [--host-key-file FILE]
           [--worker-json PATH] [--docker-host URL]
Run the line that `cumulus worker join-command` prints, as root, on the new host.
EOF
}

parse_args() {
    SUPERVISOR=""
    PIN=""
    SSH_ADDRESS="${CUMULUS_JOIN_SSH_ADDRESS:-}"
    ADVERTISE_ADDR=""
    HOST_NAME="${CUMULUS_JOIN_HOSTNAME:-}"
    HOST_KEY_FILE="${CUMULUS_JOIN_HOST_KEY_FILE:-/etc/ssh/ssh_host_ed25519_key.pub}"
    WORKER_JSON="${CUMULUS_JOIN_WORKER_JSON:-/etc/cumulus/worker.json}"
    DOCKER_HOST_URL="${DOCKER_HOST:-}"
    while [[ $# -gt 0 ]]; do
        [[ $1 == -h || $1 == --help ]] && { usage; exit 0; }
        [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
        case "$1" in
            --supervisor) SUPERVISOR="$2" ;;
            --pin) PIN="$2" ;;
            --ssh-address) SSH_ADDRESS="$2" ;;
            --advertise-addr) ADVERTISE_ADDR="$2" ;;
            --hostname) HOST_NAME="$2" ;;
            --host-key-file) HOST_KEY_FILE="$2" ;;
            --worker-json) WORKER_JSON="$2" ;;
            --docker-host) DOCKER_HOST_URL="$2" ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
        shift 2
    done
    [[ -n $SUPERVISOR ]] || die "--supervisor HOST:PORT is missing: $RUN_THE_LINE"
    [[ $SUPERVISOR =~ ^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$ ]] \
        || die "--supervisor $SUPERVISOR is not HOST:PORT"
    [[ $PIN =~ ^sha256//[A-Za-z0-9+/]{43}=(\;sha256//[A-Za-z0-9+/]{43}=)*$ ]] \
        || die "--pin must be sha256//BASE64 (the SHA-256 of the supervisor's public key), as the join line gives it"
    [[ -z $SSH_ADDRESS || $SSH_ADDRESS =~ ^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$ ]] \
        || die "--ssh-address $SSH_ADDRESS is not HOST:PORT"
    [[ -z $DOCKER_HOST_URL || $DOCKER_HOST_URL =~ ^(unix|tcp|ssh):// ]] \
        || die "--docker-host/DOCKER_HOST $DOCKER_HOST_URL is not a Docker URL (unix://PATH, tcp://HOST:PORT)"
}

read_token() {
    TOKEN="${CUMULUS_JOIN_TOKEN:-}"
    unset CUMULUS_JOIN_TOKEN   # not passed on to apt, docker, setup-worker.sh
    [[ -n $TOKEN ]] || die "CUMULUS_JOIN_TOKEN is not set: $RUN_THE_LINE"
    [[ $TOKEN =~ ^cumulus_join_[A-Za-z0-9._~+/=-]+$ ]] \
        || die "CUMULUS_JOIN_TOKEN is not a join token (they start with cumulus_join_): copy the line again"
    printf 'Authorization: Bearer %s\n' "$TOKEN" >"$WORK/auth"   # printf is a builtin: not on a command line
    TOKEN=""
}

apt_install() {
    command -v apt-get >/dev/null \
        || die "$1 is missing and there is no apt-get to install it: install $1, then run the line again"
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@" \
        >"$WORK/apt.log" 2>&1 || die "apt-get install $* failed: $(tail -n 3 "$WORK/apt.log")"
}

prerequisites() {
    [[ $EUID == 0 ]] || die "run the line as root (in a root shell, e.g. after \`sudo -i\`)"
    local tool
    for tool in tar gzip; do
        command -v "$tool" >/dev/null || die "$tool is missing: install it, then run the line again"
    done
    command -v python3 >/dev/null || apt_install python3
    if [[ ! -s $HOST_KEY_FILE ]]; then
        [[ $HOST_KEY_FILE == /etc/ssh/ssh_host_ed25519_key.pub ]] \
            || die "no SSH host key at $HOST_KEY_FILE (--host-key-file)"
        command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || apt_install openssh-server
        [[ -s $HOST_KEY_FILE ]] || ssh-keygen -A >/dev/null 2>&1 || true
        [[ -s $HOST_KEY_FILE ]] \
            || die "no SSH host key at $HOST_KEY_FILE: this host's sshd needs an ed25519 key (ssh-keygen -A)"
    fi
    HOST_KEY="$(awk 'NR == 1 {print $1 " " $2}' "$HOST_KEY_FILE")"
    [[ $HOST_KEY =~ ^ssh-ed25519\ [A-Za-z0-9+/=]+$ ]] || die "$HOST_KEY_FILE is not an ed25519 public host key"
    HOST_NAME="${HOST_NAME:-$(hostname)}"
    if [[ -z $SSH_ADDRESS ]]; then
        SSH_ADDRESS="$(route_source "${SUPERVISOR%:*}"):22"
        [[ $SSH_ADDRESS != :22 ]] || die "cannot tell this host's address: give --ssh-address HOST:PORT"
    fi
    ADVERTISE_ADDR="${ADVERTISE_ADDR:-${SSH_ADDRESS%:*}}"
    ADVERTISE_ADDR="${ADVERTISE_ADDR#[}"; ADVERTISE_ADDR="${ADVERTISE_ADDR%]}"
}

route_source() {   # the source address this host uses to reach $1 (a name or an address), else its first address
    local host="${1#[}" addr
    host="${host%]}"
    addr="$(getent ahosts "$host" 2>/dev/null | awk 'NR == 1 {print $1}')"
    ip -o route get "${addr:-$host}" 2>/dev/null | sed -n 's/.* src \([^ ]*\).*/\1/p' | head -n 1 | grep . \
        || hostname -I 2>/dev/null | awk '{print $1}'
}

# ---------------------------------------------------------------- HTTPS to the supervisor (pinned)
# https GET|POST PATH OUTFILE [BODYFILE] -> sets HTTP_CODE; dies on a transport failure. Retries while the
# supervisor is unreachable or answers 503 (starting), for up to a minute.
https() {
    local method="$1" path="$2" out="$3" body="${4:-}" rc attempt
    LAST_URL="https://$SUPERVISOR$path"
    local args=(-sS --proto "=https" -k --pinnedpubkey "$PIN" --connect-timeout 10 --max-time 300
                -H @"$WORK/auth" -o "$out" -w '%{http_code}')
    [[ $method == POST ]] && args+=(-X POST -H 'Content-Type: application/json' --data-binary @"$body")
    for attempt in $(seq 1 20); do
        rc=0
        HTTP_CODE="$(curl "${args[@]}" "https://$SUPERVISOR$path" 2>"$WORK/curl.err")" || rc=$?
        if [[ $rc == 0 && $HTTP_CODE != 503 ]]; then return 0; fi
        if [[ $rc == 90 ]]; then
            die "the server at $SUPERVISOR does not have the pinned public key: refused (a man in the middle," \
                "or the supervisor's certificate changed: print a new line with \`cumulus worker join-command\`)"
        fi
        if [[ $attempt == 20 || ($rc != 0 && $rc != 7 && $rc != 28 && $rc != 35 && $rc != 52 && $rc != 56) ]]; then
            [[ $rc == 0 ]] && http_error "$out"
            die "cannot reach the supervisor at https://$SUPERVISOR$path: $(tr -d '\r' <"$WORK/curl.err" | tail -n 1)" \
                "(curl exit $rc; check that this host can reach $SUPERVISOR: firewall, or the supervisor's" \
                "server.http_advertise)"
        fi
        sleep 3
    done
}

http_error() {   # the supervisor's JSON error {"code": ..., "message": ...} -> join: <message> (<code>)
    python3 - "$1" "$HTTP_CODE" <<'PY' >&2 || printf 'join: %s answered HTTP %s\n' "$LAST_URL" "$HTTP_CODE" >&2
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
    print(f"join: {doc['message']} ({doc.get('code', 'HTTP ' + sys.argv[2])})")
except Exception:
    sys.exit(1)
PY
    exit 1
}

# ---------------------------------------------------------------- the steps
fetch_files() {
    log "fetching the worker files from https://$SUPERVISOR (public key pinned)"
    https GET /join/worker-files.tar.gz "$WORK/files.tar.gz"
    [[ $HTTP_CODE == 200 ]] || http_error "$WORK/files.tar.gz"
    mkdir "$WORK/files"
    tar -xzf "$WORK/files.tar.gz" -C "$WORK/files" --no-same-owner 2>"$WORK/tar.err" \
        || die "the worker files from the supervisor are not a tar.gz: $(head -n 1 "$WORK/tar.err")"
    SETUP="$(find "$WORK/files" -maxdepth 3 -type f -name setup-worker.sh | head -n 1)"
    [[ -n $SETUP ]] || die "the worker files from the supervisor lack setup-worker.sh"
}

register() {
    log "registering $HOST_NAME (ssh $SSH_ADDRESS, host key ${HOST_KEY:0:24}...)"
    python3 - "$HOST_NAME" "$SSH_ADDRESS" "$HOST_KEY" >"$WORK/register.json" <<'PY'
import json, sys
print(json.dumps({"hostname": sys.argv[1], "sshAddress": sys.argv[2], "hostKey": sys.argv[3]}))
PY
    https POST /v1/join/register "$WORK/registered.json" "$WORK/register.json"
    [[ $HTTP_CODE == 200 ]] || http_error "$WORK/registered.json"
    mkdir -m 700 "$WORK/reg"
    # Each field to its own file, checked: nothing the supervisor sends is evaluated by the shell.
    python3 - "$WORK/registered.json" "$WORK/reg" <<'PY' || die "the supervisor's answer to register is not usable"
import json, os, re, sys
doc = json.load(open(sys.argv[1]))
out = sys.argv[2]
def put(name, value, pattern):
    if not isinstance(value, str) or not re.fullmatch(pattern, value, re.S):
        print(f"join: the supervisor's answer has a bad {name}: {str(value)[:60]!r}", file=sys.stderr)
        sys.exit(1)
    fd = os.open(os.path.join(out, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
hostport = r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}"
managers = doc.get("managerAddresses") or []
put("swarm_token", doc.get("swarmJoinToken"), r"SWMTKN-[A-Za-z0-9-]+")
put("manager", managers[0] if managers else None, hostport)
put("managers", " ".join(m for m in managers if isinstance(m, str)), r"[^\n]+")
put("supervisor_key", doc.get("supervisorSshPublicKey"), r"(ssh|ecdsa-sha2)-[a-z0-9-]+ [A-Za-z0-9+/=]+( [^\n]*)?")
put("ssh_user", doc.get("sshUser") or "cumulus", r"[a-z_][a-z0-9_-]{0,31}")
put("registry", doc.get("registry") or "", f"({hostport})?")
put("ca", doc.get("caCertificate") or "", r"(\s*-----BEGIN CERTIFICATE-----.+-----END CERTIFICATE-----\s*)*")
put("cluster", doc.get("clusterName") or "cumulus", r"[^\n]{1,200}")
PY
    CLUSTER="$(<"$WORK/reg/cluster")"
    log "registered with cluster '$CLUSTER': Swarm manager $(<"$WORK/reg/manager"), SSH user $(<"$WORK/reg/ssh_user")"
}

install_registry_ca() {
    local registry ca_dir
    registry="$(<"$WORK/reg/registry")"
    [[ -n $registry && -s $WORK/reg/ca ]] || return 0
    ca_dir="/etc/docker/certs.d/$registry"
    if cmp -s "$WORK/reg/ca" "$ca_dir/ca.crt"; then
        log "registry CA for $registry: already installed"
        return 0
    fi
    install -d -m 755 "$ca_dir"
    install -m 644 "$WORK/reg/ca" "$ca_dir/ca.crt"
    log "registry CA for $registry installed in $ca_dir/ca.crt"
}

docker_cmd() { if [[ -n $DOCKER_HOST_URL ]]; then DOCKER_HOST="$DOCKER_HOST_URL" docker "$@"; else docker "$@"; fi; }

check_swarm_membership() {   # a host already in a Swarm: this cluster's (a re-run), or one to leave first
    command -v docker >/dev/null || return 0
    local state managers m
    state="$(docker_cmd info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true)"
    case "$state" in
        active)
            managers="$(docker_cmd info --format '{{range .Swarm.RemoteManagers}}{{.Addr}} {{end}}' 2>/dev/null \
                || true)"
            for m in $(<"$WORK/reg/managers"); do
                if [[ " $managers " == *" $m "* ]]; then
                    log "already in this cluster's Swarm: joining again"
                    WAS_MEMBER=1
                    return 0
                fi
            done
            die "this host is in another Swarm (managers: ${managers:-unknown}); leave it first" \
                "(\`docker swarm leave\`, which stops its Swarm tasks), then run the line again with a new token"
            ;;
        error|pending)
            log "Swarm state '$state' (removed from its Swarm?): leaving it before joining"
            docker_cmd swarm leave --force >/dev/null 2>&1 || true
            ;;
    esac
}

run_setup_worker() {
    local args=(--manager "$(<"$WORK/reg/manager")" --token-file "$WORK/reg/swarm_token"
                --supervisor-key "$(<"$WORK/reg/supervisor_key")" --ssh-user "$(<"$WORK/reg/ssh_user")"
                --ssh-address "$SSH_ADDRESS" --advertise-addr "$ADVERTISE_ADDR" --hostname "$HOST_NAME"
                --host-key-file "$HOST_KEY_FILE" --output "$WORKER_JSON")
    [[ -n $DOCKER_HOST_URL ]] && args+=(--docker-host "$DOCKER_HOST_URL")
    log "running setup-worker.sh (installs what is missing; the first time on a fresh host takes a few minutes)"
    local rc=0 line
    bash "$SETUP" "${args[@]}" 2>&1 >/dev/null | while IFS= read -r line; do log "  $line"; done
    rc="${PIPESTATUS[0]}"
    [[ $rc == 0 ]] || die "setup-worker.sh failed (exit $rc; its messages are above)"
    [[ -s $WORKER_JSON ]] || die "setup-worker.sh wrote no worker JSON at $WORKER_JSON"
}

node_id() {
    local state id i
    for i in $(seq 1 120); do
        state="$(docker_cmd info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true)"
        id="$(docker_cmd info --format '{{.Swarm.NodeID}}' 2>/dev/null || true)"
        if [[ $state == active && -n $id ]]; then NODE_ID="$id"; return 0; fi
        [[ $i == 1 ]] && log "waiting for the Swarm to accept this node (state: ${state:-unknown})"
        sleep 0.5
    done
    die "this host did not become an active Swarm node within 60 s (state: ${state:-unknown}); see \`docker info\`"
}

complete_join() {
    log "completing the join as Swarm node $NODE_ID"
    python3 - "$NODE_ID" "$WORKER_JSON" >"$WORK/complete.json" <<'PY'
import json, sys
print(json.dumps({"nodeId": sys.argv[1], "workerJson": open(sys.argv[2]).read()}))
PY
    https POST /v1/join/complete "$WORK/completed.json" "$WORK/complete.json"
    if [[ $HTTP_CODE == 409 && $WAS_MEMBER == 1 ]] && grep -q 'is not in the Swarm' "$WORK/completed.json"; then
        # The manager removed this node (`cumulus worker remove`) but its dockerd still thinks it is a member
        # (it only sees its sessions refused): leave, join anew, complete with the new node id.
        log "the Swarm no longer knows node $NODE_ID (it was removed): leaving it and joining again"
        WAS_MEMBER=0
        docker_cmd swarm leave --force >/dev/null 2>&1 || true
        run_setup_worker
        node_id
        complete_join
        return
    fi
    [[ $HTTP_CODE == 200 ]] || http_error "$WORK/completed.json"
    local summary
    summary="$(python3 - "$WORK/completed.json" <<'PY' 2>/dev/null || true
import json, sys
doc = json.load(open(sys.argv[1]))
labels = doc.get("labels") or {}
print(f"{doc.get('hostname', '?')}, {labels.get('cumulus.device_count', '?')} device(s), "
      f"{labels.get('cumulus.gpu_count', '?')} GPU(s)")
PY
)"
    log "joined: ${summary:-$HOST_NAME}"
}

main() {
    exec </dev/null   # the script itself came on stdin: nothing below may read it
    set -uo pipefail
    umask 077
    WAS_MEMBER=0
    parse_args "$@"
    WORK="$(mktemp -d /tmp/cumulus-join.XXXXXX)" || die "cannot make a temporary directory"
    trap 'rm -rf "$WORK"' EXIT
    trap 'exit 130' INT TERM
    read_token
    umask 022
    prerequisites
    fetch_files
    register
    install_registry_ca
    check_swarm_membership
    run_setup_worker
    node_id
    complete_join
    # shellcheck disable=SC2016  # the backquotes are text
    printf 'join: done in %d s: %s is a worker of %s (Swarm node %s, SSH %s); see `cumulus workers`\n' \
        "$SECONDS" "$HOST_NAME" "$CLUSTER" "$NODE_ID" "$SSH_ADDRESS"
}

main "$@"
