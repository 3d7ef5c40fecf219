"""Per-node daemons: a dockerd and (workers) an sshd, each inside the node's network namespace.

Every dockerd runs with no default bridge (``--bridge=none``: a job with ``network="none"`` gets loopback only);
a worker's also with ``--no-new-privileges``, as setup-worker.sh makes a real worker's, and it manages iptables,
IP forwarding and masquerading in its namespace, as on a real host, so that the job bridge setup-worker.sh makes
(``cumulus-jobs``) really routes, and only its egress filter keeps jobs off the cluster's addresses. A running
dockerd started with other flags (an older Cumulus) is restarted with these by :func:`start_dockerd`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from cumulus.local import state
from cumulus.local.util import (LocalClusterError, binary, kill_pids, pid_alive, pid_cmdline, read_pid, run,
                                unmount_under)



class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 2.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def docker_api(sock: Path, path: str, timeout: float = 2.0):
    """GET on a Docker socket; returns (status, parsed JSON or text)."""
    conn = _UnixHTTPConnection(str(sock), timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body
    finally:
        conn.close()


def docker_ping(sock: Path) -> bool:
    try:
        status, _ = docker_api(sock, "/_ping", timeout=1.0)
        return status == 200
    except OSError:
        return False


def dockerd_pid(node: state.Node) -> int | None:
    pid = read_pid(node.docker_pidfile)
    if pid_alive(pid) and any("dockerd" in a for a in pid_cmdline(pid)[:1]):
        return pid
    return None


def dockerd_args(node: state.Node) -> list[str]:
    """The node's dockerd command line (the flags are what :func:`start_dockerd` compares with a running one)."""
    if node.role == "worker":  # like a real worker host: the job bridge routes, NATs, and is filtered
        network = ["--iptables=true", "--ip-forward=true", "--ip-masq=true", "--ip6tables=false",
                   "--no-new-privileges"]
    else:  # the manager runs no job
        network = ["--iptables=false", "--ip-forward=false", "--ip-masq=false", "--ip6tables=false"]
    return [
        binary("dockerd"),
        "--config-file", str(node.docker_config),
        "--data-root", str(node.data_root),
        "--exec-root", str(node.exec_root),
        "--pidfile", str(node.docker_pidfile),
        "-H", node.docker_url,
        "--bridge=none", *network,
        "--userland-proxy=false",
        "--cgroup-parent", node.cgroup_parent,
        "--log-level", "warn",
    ]


def start_dockerd(node: state.Node) -> subprocess.Popen | None:
    """Start the node's dockerd (in its netns and its own UTS namespace, so the Swarm sees hostname cwN).

    Returns the Popen, or None if it was already running with :func:`dockerd_args`. One running with other flags
    is stopped first (its containers stop with it; Swarm restarts nothing of Cumulus's: jobs are one-shot). Call
    wait_dockerd() afterwards.
    """
    pid = dockerd_pid(node)
    if pid and pid_cmdline(pid) == dockerd_args(node):
        return None
    if pid:
        stop_dockerd(node)
    node.dir.mkdir(parents=True, exist_ok=True)
    # A dockerd that died hard leaves mounts (nsfs under <exec-root>/netns, overlays, shm): clear them first.
    unmount_under(node.exec_root)
    unmount_under(node.data_root)
    for stale in (node.docker_socket, node.docker_pidfile):
        stale.unlink(missing_ok=True)
    if node.role == "worker":
        # Docker 20.10 keeps a Swarm-scoped bridge network that was in use when its dockerd died in its network
        # store, and every later task on that network is rejected ("network ... exists": moby/moby#37087). A
        # worker's store holds nothing else of value (no default bridge; the job network's config-only network
        # is made again by ensure_job_network_config), so a (re)started worker dockerd starts with a clean one.
        (node.data_root / "network" / "files" / "local-kv.db").unlink(missing_ok=True)
    # --config-file: never pick up the host's /etc/docker/daemon.json.
    node.docker_config.write_text("{}\n")
    args = dockerd_args(node)
    script = f"hostname {node.name} && exec " + " ".join(_q(a) for a in args)
    cmd = ["nsenter", f"--net={node.netns_path}", "unshare", "--uts", "sh", "-c", script]
    log = open(node.docker_log, "ab")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    finally:
        log.close()


def _q(a: str) -> str:
    import shlex

    return shlex.quote(a)


def wait_dockerd(node: state.Node, proc: subprocess.Popen | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker_ping(node.docker_socket):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = ""
    try:
        tail = node.docker_log.read_text()[-2000:]
    except OSError:
        pass
    raise LocalClusterError(f"dockerd of {node.name} did not come up; log tail:\n{tail}")


def stop_dockerd(node: state.Node, wait: float = 20) -> None:
    pid = dockerd_pid(node)
    if pid:
        kill_pids([pid], signal.SIGTERM, wait=wait)
    # its containerd (child) should be gone too; anything left in the netns is killed by the caller


def ensure_host_key(node: state.Node) -> bool:
    if node.host_key.exists() and node.host_key.with_suffix(".pub").exists():
        return False
    node.dir.mkdir(parents=True, exist_ok=True)
    node.host_key.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"cumulus-local-{node.name}", "-f",
         str(node.host_key)])
    return True


def write_sshd_config(node: state.Node) -> None:
    text = f"""# cumulus local cluster: sshd of {node.name} (runs in netns {node.name})
Port 22
ListenAddress {node.address}
HostKey {node.host_key}
PidFile {node.sshd_pidfile}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
AllowUsers {state.SSH_USER}
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 200:30:400
MaxSessions 200
ClientAliveInterval 15
Subsystem sftp internal-sftp
"""
    if not node.sshd_config.exists() or node.sshd_config.read_text() != text:
        node.sshd_config.write_text(text)


def sshd_pid(node: state.Node) -> int | None:
    pid = read_pid(node.sshd_pidfile)
    if pid_alive(pid) and "sshd" in " ".join(pid_cmdline(pid)[:1]):
        return pid
    return None


def start_sshd(node: state.Node) -> bool:
    """Start the node's sshd listening only on <node address>:22 inside its netns. False if already running."""
    if sshd_pid(node):
        return False
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    ensure_host_key(node)
    write_sshd_config(node)
    node.sshd_pidfile.unlink(missing_ok=True)
    # own UTS namespace too, so `hostname` in an SSH session says cwN like a real host would
    sshd = binary("sshd")
    script = f"hostname {node.name} && exec {sshd} -f {_q(str(node.sshd_config))} -E {_q(str(node.sshd_log))}"
    run(["nsenter", f"--net={node.netns_path}", "unshare", "--uts", "sh", "-c", script])
    return True


def wait_sshd(node: state.Node, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((node.address, 22), timeout=1) as s:
                s.settimeout(1)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    pid = sshd_pid(node)
    log_tail = node.sshd_log.read_text(errors="replace").strip().splitlines()[-5:] if node.sshd_log.exists() else []
    raise LocalClusterError(
        f"sshd of {node.name} not answering on {node.address}:22 within {timeout:.0f} s "
        f"({f'its process {pid} runs' if pid else 'its process is gone'}); the end of {node.sshd_log}: "
        + (" | ".join(log_tail) or "(empty)"))


def stop_sshd(node: state.Node) -> None:
    pid = sshd_pid(node)
    if pid:
        kill_pids([pid], signal.SIGTERM, wait=5)


def cgroup_pids(node: state.Node) -> list[int]:
    """Processes of the node's containers (dockerd runs them under cgroup parent cumulus-cwN)."""
    pids: set[int] = set()
    root = Path("/sys/fs/cgroup")
    candidates = [root / node.cgroup_parent] + [p / node.cgroup_parent for p in root.iterdir() if p.is_dir()] \
        if root.exists() else []
    for base in candidates:
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            for fname in ("cgroup.procs",):
                if fname in files:
                    try:
                        pids.update(int(x) for x in Path(dirpath, fname).read_text().split())
                    except OSError:
                        pass
    return sorted(pids)


def remove_cgroups(node: state.Node) -> None:
    root = Path("/sys/fs/cgroup")
    if not root.exists():
        return
    for base in [root / node.cgroup_parent] + [p / node.cgroup_parent for p in root.iterdir() if p.is_dir()]:
        if base.is_dir():
            for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -t[0].count("/")):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


JOB_SUBNET = "10.213.254.0/24"  # setup-worker.sh's default: each worker's job bridge, inside its own netns


def ensure_job_network_config(node: state.Node) -> bool:
    """Make the config-only network ``cumulus-jobs-config`` on a worker's dockerd if it lacks it (as
    setup-worker.sh does; needed again after :func:`start_dockerd` cleaned the network store). True if made."""
    docker = [binary("docker"), "-H", node.docker_url]
    if subprocess.run(docker + ["network", "inspect", "cumulus-jobs-config"], capture_output=True).returncode == 0:
        return False
    run(docker + ["network", "create", "--config-only", "--subnet", JOB_SUBNET,
                  "-o", "com.docker.network.bridge.name=cumulus-jobs",
                  "-o", "com.docker.network.bridge.enable_icc=false", "cumulus-jobs-config"])
    return True
