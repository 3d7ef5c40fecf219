#!/usr/bin/env bash
# The README's first command on a machine made as fresh as this one can be, as a new user meets it.
#
#   bash scripts/fresh-machine-check.sh                        # Debian 12 with no Docker at all
#   bash scripts/fresh-machine-check.sh --kill-at-random-step  # with only a Docker CLI; `local up` is killed
#                                                              # (SIGINT or SIGKILL) at a random step, then the
#                                                              # README's command runs again
#
# Making fresh: `cumulus local down --purge`, purge the Debian packages `local up` installs, remove Cumulus's
# state, caches, worker setup (/opt/cumulus, the cumulus user) and the repository's .venv. Then it runs
# `bash scripts/quickstart.sh` exactly as the README writes it and checks that it prints 4.
# The random step is drawn from a new seed each run (printed); CUMULUS_FRESH_SEED=N replays one.
# Needs root; destroys any local cluster on this machine. Exit 0 only when every check held.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=plain
[ "${1:-}" = --kill-at-random-step ] && MODE=kill
[ "$(id -u)" = 0 ] || { echo "fresh-machine-check: needs root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
OUT=$(mktemp -d /tmp/cumulus-fresh.XXXXXX)
STEPS=("packages (apt)" "network: bridge + namespaces" "dockerd per node" "swarm init (manager cw0)"
       "ssh keys + sshd per worker" "setup-worker.sh per worker" "worker image on every node"
       "node labels + cluster description" "all nodes Ready" "supervisor")
# The longest delay (tenths of a second) drawn for each step: about how long the step lasts on a fresh machine.
MAX_DELAY=(200 5 5 5 5 900 600 2 2 0)
# What `cumulus local up` (and setup-worker.sh) install that a fresh Debian 12 does not have.
PACKAGES=(docker.io containerd runc tini debootstrap openssh-server openssh-sftp-server pocl-opencl-icd libpocl2
          ocl-icd-opencl-dev ocl-icd-libopencl1 opencl-headers opencl-c-headers clinfo)
say() { echo "fresh-machine-check: $*" >&2; }

make_fresh() {
  say "making the machine fresh"
  if [ ! -x .venv/bin/cumulus ]; then bash scripts/setup.sh >/dev/null; fi
  .venv/bin/cumulus local down --purge -q
  local installed=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && installed+=("$p")
  done
  dpkg --configure -a  # a run killed inside dpkg (this check's own, or anyone's) blocks every later apt run
  [ ${#installed[@]} = 0 ] || apt-get purge -y -q "${installed[@]}" >/dev/null
  apt-get clean
  id cumulus >/dev/null 2>&1 && userdel -r cumulus 2>/dev/null || true
  rm -rf --one-file-system /opt/cumulus /var/lib/cumulus /var/lib/cumulus-local /var/cache/cumulus-local \
    /tmp/chronos_locks /etc/tmpfiles.d/cumulus-chronos.conf /run/cumulus-local.lock .venv
  for b in dockerd containerd runc debootstrap sshd; do
    ! command -v "$b" >/dev/null || { say "FAILED: $b is still installed ($(command -v "$b"))"; exit 1; }
  done
}

# Runs the README's first command exactly as written; checks it printed 4.
readme_first_command() {
  local log=$1 start=$SECONDS
  if bash scripts/quickstart.sh >"$log" 2>&1; then
    if grep -qx 4 "$log"; then
      say "the README's first command printed 4 in $((SECONDS - start)) s"
      return 0
    fi
    say "FAILED: the README's first command did not print 4; its output: $log"
  else
    say "FAILED: the README's first command exited non-zero after $((SECONDS - start)) s; its output: $log"
  fi
  tail -n 40 "$log" >&2
  return 1
}

# The process of `cumulus local up` started by the quickstart (not sudo, not the shell).
local_up_pid() { pgrep -f -n "\.venv/bin/cumulus local up" || true; }

hidden=""
restore_docker_cli() { [ -z "$hidden" ] || mv "$hidden.cumulus-hidden" "$hidden"; hidden=""; }
trap restore_docker_cli EXIT

make_fresh
if [ $MODE = plain ]; then
  # A Docker CLI that no Debian package installed (e.g. /usr/local/bin/docker) is moved aside: no Docker at all.
  cli=$(command -v docker || true)
  if [ -n "$cli" ] && ! dpkg -S "$(readlink -f "$cli")" >/dev/null 2>&1; then
    mv "$cli" "$cli.cumulus-hidden"; hidden=$cli; say "hid the Docker CLI $cli for this run"
  fi
  readme_first_command "$OUT/quickstart.log"
  restore_docker_cli
  exit 0
fi

SEED=${CUMULUS_FRESH_SEED:-$(( (RANDOM << 15) | RANDOM ))}
STEP=${STEPS[$(( SEED % ${#STEPS[@]} ))]}
SIGNAL=$([ $(( (SEED / ${#STEPS[@]}) % 2 )) = 0 ] && echo KILL || echo INT)
DELAY_TENTHS=$(( (SEED / (2 * ${#STEPS[@]})) % (MAX_DELAY[SEED % ${#STEPS[@]}] + 1) ))
say "seed $SEED (replay: CUMULUS_FRESH_SEED=$SEED): SIG$SIGNAL to \`cumulus local up\` $((DELAY_TENTHS / 10)).$((DELAY_TENTHS % 10)) s into step '$STEP'"
# In its own process group, as a terminal's foreground job is (and with SIGINT not ignored, which a
# non-interactive shell does to its background jobs): Ctrl-C is SIGINT to that whole group.
set -m
bash scripts/quickstart.sh >"$OUT/interrupted.log" 2>&1 &
qs=$!
set +m
killed=no
while kill -0 $qs 2>/dev/null; do
  if grep -qF "] $STEP ..." "$OUT/interrupted.log"; then
    # the delay, cut short if the last step starts meanwhile (`up` must still be running when it is killed)
    for _ in $(seq "$DELAY_TENTHS"); do
      ! grep -qF "] supervisor ..." "$OUT/interrupted.log" || break
      sleep 0.1
    done
    pid=$(local_up_pid)
    if [ -n "$pid" ]; then
      if [ $SIGNAL = INT ]; then kill -s INT -- "-$qs" && killed=yes; else kill -s KILL "$pid" && killed=yes; fi
    fi
    break
  fi
  sleep 0.1
done
rc=0; wait $qs || rc=$?
if [ $killed = yes ]; then
  running=$(grep -o '\] [^ ].* \.\.\.$' "$OUT/interrupted.log" | tail -n 1 | sed 's/^\] //; s/ \.\.\.$//' || true)
  say "killed \`cumulus local up\` in step '$running'; the quickstart exited $rc; its last lines:"
  tail -n 4 "$OUT/interrupted.log" >&2
  [ $rc != 0 ] || { say "FAILED: the interrupted quickstart exited 0"; exit 1; }
else
  say "FAILED: \`cumulus local up\` was not running at step '$STEP' (quickstart exited $rc): $OUT/interrupted.log"
  tail -n 20 "$OUT/interrupted.log" >&2
  exit 1
fi
readme_first_command "$OUT/rerun.log"
