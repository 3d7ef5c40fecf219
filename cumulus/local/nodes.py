"""`cumulus local add-node/remove-node/exec`: extra hosts with nothing of Cumulus on them, to join by hand.

``add-node`` makes one more network namespace ``cw<N>`` (the next free index) on the local cluster's bridge with
what a fresh cloud machine has: its own address 10.213.0.(10+N), a running dockerd (own socket and data root, not
in the Swarm) and an sshd on <address>:22 with its own host key. Nothing of Cumulus: not in the Swarm, no labels,
its host key in no known_hosts, no worker JSON; ``setup-worker.sh`` has not run there. Such nodes are recorded in
``<state>/added-nodes.json`` (``up`` never rewrites it; ``down`` removes them with the rest, as it finds every
``cw<i>`` namespace and node directory).

What is not like a real machine: the namespaces share this machine's file system and process table, so what
``setup-worker.sh`` installs (packages, /opt/cumulus, the ``cumulus`` user and its authorized_keys) is shared with
the cluster's other nodes, and the node's dockerd already runs with the flags that setup-worker.sh would set in a
real host's /etc/docker/daemon.json (``--bridge=none``, ``--no-new-privileges``: with ``--docker-host`` it checks
a daemon it does not manage rather than reconfiguring it).

``exec NAME -- CMD...`` is the stand-in for ``ssh root@newhost CMD``: CMD runs as root in the node's network
namespace and a UTS namespace whose host name is ``cw<N>``, in a clean login-like environment plus what a real host
has at the default paths: ``DOCKER_HOST`` (its dockerd's socket), ``CUMULUS_JOIN_HOST_KEY_FILE`` (its sshd's host
key) and ``CUMULUS_JOIN_WORKER_JSON`` (its worker JSON path), which ``worker_image/join.sh`` honours.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

from cumulus.local import children, daemons, netns, state, teardown
from cumulus.local.util import LocalClusterError, Progress, binary, remove_tree, require_root, run, unmount_under

ADDED_JSON = state.STATE_DIR / "added-nodes.json"
LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def added_nodes() -> list[dict[str, Any]]:
    """The recorded added nodes, by index."""
    import json

    try:
        doc = json.loads(ADDED_JSON.read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise LocalClusterError(f"{ADDED_JSON} is not valid JSON ({exc}): fix or delete it") from None
    return sorted(doc.get("nodes", []), key=lambda n: n["index"])


def _save(entries: list[dict[str, Any]]) -> None:
    state.write_json(ADDED_JSON, {"version": 1, "nodes": sorted(entries, key=lambda n: n["index"])})


def _cluster_indexes() -> set[int]:
    try:
        return {n["index"] for n in state.load_cluster().get("nodes", [])}
    except FileNotFoundError:
        raise LocalClusterError("no local cluster: run `cumulus local up` first") from None


def _used_indexes() -> set[int]:
    used = _cluster_indexes() | {n["index"] for n in added_nodes()}
    used |= {int(name[len(state.NETNS_PREFIX):]) for name in netns.list_netns()}
    if state.NODES_DIR.exists():
        used |= {int(d.name[len(state.NETNS_PREFIX):]) for d in state.NODES_DIR.iterdir()
                 if d.name.startswith(state.NETNS_PREFIX) and d.name[len(state.NETNS_PREFIX):].isdigit()}
    return used


def _entry(node: state.Node) -> dict[str, Any]:
    return {"index": node.index, "name": node.name, "address": node.address, "ssh": node.ssh,
            "netns": node.name, "docker_socket": str(node.docker_socket),
            "host_key_file": str(node.host_key.with_suffix(".pub")), "worker_json": str(node.worker_json),
            "added_at": time.time()}


def add_node(quiet: bool = False) -> dict[str, Any]:
    """Create the next ``cw<N>`` host (see the module docstring); returns its entry in added-nodes.json."""
    require_root()
    p = Progress(quiet)
    with children.run_lock("add-node", p.log):
        used = _used_indexes()
        index = next((i for i in range(1, state.MAX_NODES) if i not in used), None)
        if index is None:
            raise LocalClusterError(f"no free node index below {state.MAX_NODES}")
        node = state.Node(index)
        entry = _entry(node)
        _save([*added_nodes(), entry])  # recorded first: a failure below leaves it for remove-node / down
        try:
            with p.step(f"{node.name}: namespace {node.address} on {state.BRIDGE}"):
                netns.ensure_bridge()
                netns.ensure_netns(node)
            with p.step(f"{node.name}: dockerd (not in the Swarm)") as s:
                proc = daemons.start_dockerd(node)
                daemons.wait_dockerd(node, proc)
                s["note"] = node.docker_url
            with p.step(f"{node.name}: sshd with its own host key") as s:
                daemons.start_sshd(node)
                daemons.wait_sshd(node)
                s["note"] = f"{node.ssh}, {_fingerprint(node)}"
        except BaseException:
            p.log(f"{node.name} is half made: `cumulus local remove-node {node.name}` removes it")
            raise
    p.log(f"{node.name} added; run commands on it as root with: cumulus local exec {node.name} -- CMD...")
    return entry


def _fingerprint(node: state.Node) -> str:
    out = run(["ssh-keygen", "-l", "-f", str(node.host_key.with_suffix(".pub"))]).stdout.split()
    return out[1] if len(out) > 1 else "?"


def _added(name: str) -> dict[str, Any]:
    for entry in added_nodes():
        if entry["name"] == name:
            return entry
    names = [e["name"] for e in added_nodes()]
    raise LocalClusterError(f"no added node {name!r} (added nodes: {', '.join(names) or 'none'}; "
                            "the cluster's own nodes go with `cumulus local down`)")


def _node_named(name: str) -> state.Node:
    rest = name[len(state.NETNS_PREFIX):]
    if not (name.startswith(state.NETNS_PREFIX) and rest.isdigit()):
        raise LocalClusterError(f"{name!r} is not a node name (cw<N>)")
    return state.Node(int(rest))


# ------------------------------------------------------------------------------------------------ remove
def remove_node(name: str, quiet: bool = False) -> None:
    """Take an added node out of the Swarm (if it joined), stop its daemons, delete its namespace and files."""
    require_root()
    p = Progress(quiet)
    with children.run_lock("remove-node", p.log):
        entry = _added(name)
        node = state.Node(entry["index"])
        with p.step(f"{node.name}: leave the Swarm") as s:
            s["note"] = _leave_swarm(node)
        with p.step(f"{node.name}: stop sshd + dockerd") as s:
            daemons.stop_sshd(node)
            daemons.stop_dockerd(node)
            s["note"] = f"{teardown.kill_node_processes(node)} leftover process(es) killed"
        with p.step(f"{node.name}: namespace + files") as s:
            unmount_under(node.dir)
            netns.delete_netns(node.name)
            subprocess.run(["ip", "link", "del", node.veth_host], capture_output=True)
            daemons.remove_cgroups(node)
            remove_tree(node.dir)
            s["note"] = f"removed {node.dir}"
        _save([e for e in added_nodes() if e["name"] != name])
    p.log(f"{node.name} removed")


def _leave_swarm(node: state.Node) -> str:
    """The node leaves the Swarm and the manager forgets it (found by its address, also when its dockerd died)."""
    notes = []
    docker = binary("docker")
    if daemons.docker_ping(node.docker_socket):
        _, info = daemons.docker_api(node.docker_socket, "/info", timeout=10)
        if isinstance(info, dict) and (info.get("Swarm") or {}).get("LocalNodeState") not in (None, "", "inactive"):
            subprocess.run([docker, "-H", node.docker_url, "swarm", "leave", "--force"], capture_output=True,
                           timeout=60)
            notes.append("left")
    manager = state.Node(0)
    if daemons.docker_ping(manager.docker_socket):
        status, listed = daemons.docker_api(manager.docker_socket, "/nodes", timeout=10)
        for entry in listed if status == 200 and isinstance(listed, list) else []:
            if (entry.get("Status") or {}).get("Addr") == node.address:
                subprocess.run([docker, "-H", manager.docker_url, "node", "rm", "--force", entry["ID"]],
                               capture_output=True, timeout=60)
                notes.append(f"node {entry['ID'][:12]} removed from the manager")
    return ", ".join(notes) or "was not in the Swarm"


# ------------------------------------------------------------------------------------------------ exec
def exec_environment(node: state.Node) -> dict[str, str]:
    """The environment of a root login on the node (see the module docstring)."""
    env = {"PATH": LOGIN_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash",
           "LANG": "C.UTF-8",
           "DOCKER_HOST": node.docker_url,
           "CUMULUS_JOIN_HOST_KEY_FILE": str(node.host_key.with_suffix(".pub")),
           "CUMULUS_JOIN_WORKER_JSON": str(node.worker_json)}
    if os.environ.get("TERM"):
        env["TERM"] = os.environ["TERM"]
    return env


def exec_command(name: str, command: list[str]) -> None:
    """Replace this process by ``command`` run as root on the node (never returns on success)."""
    require_root()
    if not command:
        raise LocalClusterError("give the command after --: cumulus local exec NAME -- CMD...")
    node = _node_named(name)
    if node.name not in netns.list_netns():
        known = [e["name"] for e in added_nodes()] + [f"cw{i}" for i in sorted(_cluster_indexes())]
        raise LocalClusterError(f"no node {name!r} on this machine (nodes: {', '.join(known)})")
    nsenter = shutil.which("nsenter", path=LOGIN_PATH) or binary("nsenter")
    argv = [nsenter, f"--net={node.netns_path}", "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
            node.name, *command]
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir("/root" if os.path.isdir("/root") else "/")
    os.execve(nsenter, argv, exec_environment(node))


# ------------------------------------------------------------------------------------------------ status
def status(manager_nodes: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The added nodes with their live state; ``manager_nodes`` is the manager's /nodes list (None: unreachable)."""
    out = []
    by_addr: dict[str, dict[str, Any]] = {}
    for listed in manager_nodes or []:  # a ready entry wins over a stale one at the same address
        addr = (listed.get("Status") or {}).get("Addr")
        if addr not in by_addr or (listed.get("Status") or {}).get("State") == "ready":
            by_addr[addr] = listed
    for entry in added_nodes():
        node = state.Node(entry["index"])
        swarm = by_addr.get(node.address) or {}
        labels = (swarm.get("Spec") or {}).get("Labels") or {}
        raw = (swarm.get("Status") or {}).get("State")
        out.append({**entry,
                    "dockerd": "running" if daemons.dockerd_pid(node) else "stopped",
                    "sshd": "running" if daemons.sshd_pid(node) else "stopped",
                    "node_id": swarm.get("ID"),
                    "state": {"ready": "Ready", "down": "Down"}.get(raw, (raw or "not in swarm").capitalize())
                    if manager_nodes is not None else "unknown",
                    "joined": labels.get("cumulus.worker") == "true"})
    return out


def format_status(entries: list[dict[str, Any]]) -> list[str]:
    """Table lines for `cumulus local status` (none when no node was added)."""
    if not entries:
        return []
    lines = [f"{'ADDED':<5} {'JOINED':<8} {'STATE':<13} {'NODE ID':<26} {'SSH':<16} {'DOCKERD':<8} SSHD"]
    for n in entries:
        lines.append(f"{n['name']:<5} {'yes' if n['joined'] else 'no':<8} {n['state']:<13} "
                     f"{n['node_id'] or '-':<26} {n['ssh']:<16} {n['dockerd']:<8} {n['sshd']}")
    return lines
