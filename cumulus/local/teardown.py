"""`cumulus local down`: stop and remove everything `cumulus local up` made, also after an interrupted `up`."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Any

from cumulus.local import children, daemons, image, netns, registry_trust, state
from cumulus.local import supervisor as local_supervisor
from cumulus.local.util import (LocalClusterError, Progress, kill_pids, mounts_under, pid_cmdline, remove_tree,
                                require_root, unmount_under)


def _our_stray_pids() -> list[int]:
    """dockerd/containerd/sshd processes started for the cluster, found by the state dir in their command line."""
    needle = str(state.STATE_DIR)
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            if any(needle in a for a in pid_cmdline(int(entry))):
                pids.append(int(entry))
    return pids


def _node_indexes() -> set[int]:
    idx = {int(n[len(state.NETNS_PREFIX):]) for n in netns.list_netns()}
    if state.NODES_DIR.exists():
        for d in state.NODES_DIR.iterdir():
            rest = d.name[len(state.NETNS_PREFIX):]
            if d.name.startswith(state.NETNS_PREFIX) and rest.isdigit():
                idx.add(int(rest))
    try:
        idx |= {n["index"] for n in state.load_cluster().get("nodes", [])}
    except (FileNotFoundError, ValueError):
        pass
    return idx


def kill_node_processes(node: state.Node, sig: int = signal.SIGKILL) -> int:
    pids = set(netns.netns_pids(node.name)) if node.name in netns.list_netns() else set()
    pids |= set(daemons.cgroup_pids(node))
    pids.discard(os.getpid())
    kill_pids(sorted(pids), sig, wait=5)
    return len(pids)


def down(purge: bool = False, quiet: bool = False) -> None:
    """Remove everything `up` made (and, with ``purge``, the caches), also after an interrupted `up`."""
    require_root()
    p = Progress(quiet)
    with children.run_lock("down", p.log):
        _down(p, purge)


def _down(p: Progress, purge: bool) -> None:
    nodes = [state.Node(i) for i in sorted(_node_indexes())]
    with p.step("work left by an interrupted up") as s:
        stopped = children.stop_leftovers()
        s["note"] = ", ".join(filter(None, [f"{stopped} process(es) stopped" if stopped else "",
                                            image.release_rootfs()])) or "none"
    with p.step("supervisor") as s:
        s["note"] = local_supervisor.stop()
    with p.step("stop sshd + dockerd") as s:
        for n in nodes:
            daemons.stop_sshd(n)
        # all dockerds at once: each takes a moment to shut down its containers and containerd
        pids = [pid for pid in (daemons.dockerd_pid(n) for n in nodes) if pid]
        kill_pids(pids, signal.SIGTERM, wait=15)
        killed = sum(kill_node_processes(n) for n in nodes)
        stray = _our_stray_pids()
        kill_pids(stray, signal.SIGKILL, wait=5)
        s["note"] = f"{len(pids)} dockerd, {killed} leftover process(es) in namespaces, {len(stray)} stray"
    with p.step("mounts, namespaces, bridge") as s:
        unmounted = unmount_under(state.STATE_DIR)
        for n in nodes:
            netns.delete_netns(n.name)
            daemons.remove_cgroups(n)
        for name in netns.list_netns():
            netns.delete_netns(name)
        for veth in netns.leftover_veths():
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        netns.delete_bridge()
        s["note"] = f"{unmounted} mount(s), {len(nodes)} namespace(s)"
    with p.step("files") as s:
        _forget_supervisor_key()
        registry_trust.untrust_local_registries()
        remove_tree(state.STATE_DIR)
        s["note"] = f"removed {state.STATE_DIR}"
        if purge:
            remove_tree(state.CACHE_DIR)
            s["note"] += f" and {state.CACHE_DIR}"
    left = leftovers()
    if left:
        raise LocalClusterError(f"down left things behind: {left}")
    p.log("cluster down")


def _forget_supervisor_key() -> None:
    """Take this cluster's supervisor key out of the (shared, host-wide) cumulus user's authorized_keys."""
    pub = state.supervisor_key().with_suffix(".pub")
    try:
        key = " ".join(pub.read_text().split()[:2])
        auth = Path(pwd.getpwnam(state.SSH_USER).pw_dir) / ".ssh" / "authorized_keys"
        lines = auth.read_text().splitlines()
    except (OSError, KeyError):
        return
    kept = [line for line in lines if " ".join(line.split()[:2]) != key]
    if len(kept) != len(lines):
        auth.write_text("".join(f"{line}\n" for line in kept))


def leftovers() -> dict[str, Any]:
    """Everything `down` is supposed to remove that still exists (empty dict = clean)."""
    out: dict[str, Any] = {}
    if netns.list_netns():
        out["netns"] = netns.list_netns()
    if netns._link_exists(state.BRIDGE):
        out["bridge"] = state.BRIDGE
    if netns.leftover_veths():
        out["veths"] = netns.leftover_veths()
    if _our_stray_pids():
        out["processes"] = _our_stray_pids()
    with open("/proc/self/mountinfo") as f:
        m = [line for line in f if "nsfs" in line.split(" - ")[-1].split()[0]]
    m += mounts_under(state.STATE_DIR) + mounts_under(state.CACHE_DIR)
    if m:
        out["mounts"] = m
    if state.STATE_DIR.exists():
        out["state_dir"] = str(state.STATE_DIR)
    return out
