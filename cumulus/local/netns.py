"""The bridge and the network namespaces that play the cluster's hosts (10.213.0.0/24, nothing else)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cumulus.local import state
from cumulus.local.util import run


def _link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def list_netns() -> list[str]:
    try:
        names = os.listdir("/var/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(state.NETNS_PREFIX) and n[len(state.NETNS_PREFIX):].isdigit())


def disable_bridge_netfilter() -> str:
    """Bridged traffic must not go through iptables (a FORWARD DROP policy would cut the nodes off)."""
    path = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not path.exists():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
    if not path.exists():
        return "br_netfilter absent"
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
        p = path.parent / name
        if p.exists() and p.read_text().strip() != "0":
            p.write_text("0\n")
    return "bridge-nf-call-iptables=0"


def ensure_bridge() -> bool:
    changed = False
    if not _link_exists(state.BRIDGE):
        run(["ip", "link", "add", state.BRIDGE, "type", "bridge"])
        changed = True
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", state.BRIDGE]).stdout
    if f"{state.BRIDGE_ADDR}/{state.PREFIX_LEN}" not in addrs:
        run(["ip", "addr", "add", f"{state.BRIDGE_ADDR}/{state.PREFIX_LEN}", "dev", state.BRIDGE])
        changed = True
    if "UP" not in run(["ip", "-o", "link", "show", state.BRIDGE]).stdout.split(">")[0]:
        run(["ip", "link", "set", state.BRIDGE, "up"])
        changed = True
    return changed


def ensure_netns(node: state.Node) -> bool:
    """Namespace + veth pair (peer renamed eth0 inside) + address; idempotent."""
    changed = False
    if node.name not in list_netns():
        run(["ip", "netns", "add", node.name])
        changed = True
    ns = node.name
    if not _link_exists("eth0", ns):
        if _link_exists(node.veth_host):
            run(["ip", "link", "del", node.veth_host])
        run(["ip", "link", "add", node.veth_host, "type", "veth", "peer", "name", node.veth_peer,
             "address", node.mac])
        run(["ip", "link", "set", node.veth_peer, "netns", ns])
        run(["ip", "-n", ns, "link", "set", node.veth_peer, "name", "eth0"])
        # What the host learnt of an earlier node at this address (one made before MACs were fixed) goes too.
        subprocess.run(["ip", "neigh", "del", node.address, "dev", state.BRIDGE], capture_output=True)
        changed = True
    master = run(["ip", "-o", "link", "show", node.veth_host]).stdout
    if f"master {state.BRIDGE}" not in master:
        run(["ip", "link", "set", node.veth_host, "master", state.BRIDGE])
        changed = True
    run(["ip", "link", "set", node.veth_host, "up"])
    addrs = run(["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
    if f"{node.address}/{state.PREFIX_LEN}" not in addrs:
        run(["ip", "-n", ns, "addr", "add", f"{node.address}/{state.PREFIX_LEN}", "dev", "eth0"])
        changed = True
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    return changed


def netns_pids(name: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def delete_bridge() -> None:
    if _link_exists(state.BRIDGE):
        subprocess.run(["ip", "link", "del", state.BRIDGE], capture_output=True)


def leftover_veths() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith(state.VETH_PREFIX):
            names.append(name)
    return names
