"""Where the local cluster keeps its state, and the cluster description other code reads.

``load_cluster()`` returns the dict in ``/var/lib/cumulus-local/cluster.json`` (written by ``cumulus local up``)::

    {"manager_socket": "/var/lib/cumulus-local/nodes/cw0/docker.sock", "manager_address": "10.213.0.10:2377",
     "image_id": "sha256:...", "image_tag": "cumulus-worker:local",
     "ssh_user": "cumulus", "ssh_key": ".../keys/id_ed25519", "ssh_public_key": "ssh-ed25519 ...",
     "known_hosts": ".../keys/known_hosts",
     "holder": "/opt/cumulus/bin/cumulus-partition-holder",
     "chronos_available": "/opt/cumulus/bin/cumulus-chronos-available", "jobs_dir": "/var/lib/cumulus/jobs",
     "nodes": [{"index": 0, "name": "cw0", "role": "manager", "node_id": "...", "hostname": "cw0",
                "address": "10.213.0.10", "ssh": null, "netns": "cw0", "docker_socket": "...", "inventory": {...}},
               {"index": 1, "name": "cw1", "role": "worker", "ssh": "10.213.0.11:22", ...,
                "inventory": {"devices": [{"index": 0, "name": "...", "kind": "cpu", "is_gpu": false,
                                            "memory_bytes": 4399466496, "uuid": null, "source": "opencl"}],
                              "gpu_count": 0}}]}

The state directory can be moved with the environment variable CUMULUS_LOCAL_STATE (tests, several clusters
would still clash on the bridge/namespace names, so one cluster per machine).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ.get("CUMULUS_LOCAL_STATE", "/var/lib/cumulus-local"))
CACHE_DIR = Path(os.environ.get("CUMULUS_LOCAL_CACHE", "/var/cache/cumulus-local"))
CLUSTER_JSON = STATE_DIR / "cluster.json"
KEYS_DIR = STATE_DIR / "keys"
NODES_DIR = STATE_DIR / "nodes"

BRIDGE = "cumulus0"
SUBNET = "10.213.0.0/24"
BRIDGE_ADDR = "10.213.0.1"
PREFIX_LEN = 24
NETNS_PREFIX = "cw"
VETH_PREFIX = "cuv"
SWARM_PORT = 2377
IMAGE_TAG = "cumulus-worker:local"
BASE_TAG = "cumulus-base:bookworm"
SSH_USER = "cumulus"
HOLDER = "/opt/cumulus/bin/cumulus-partition-holder"
CHRONOS_AVAILABLE = "/opt/cumulus/bin/cumulus-chronos-available"
JOBS_DIR = "/var/lib/cumulus/jobs"
MAX_NODES = 200


def worker_image_dir() -> Path:
    env = os.environ.get("CUMULUS_WORKER_IMAGE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "worker_image"


@dataclass(frozen=True)
class Node:
    """One "host" of the local cluster: a network namespace with its own dockerd (and sshd for workers)."""

    index: int

    @property
    def name(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def role(self) -> str:
        return "manager" if self.index == 0 else "worker"

    @property
    def address(self) -> str:
        return f"10.213.0.{10 + self.index}"

    @property
    def ssh(self) -> str | None:
        return f"{self.address}:22" if self.index else None

    @property
    def veth_host(self) -> str:
        return f"{VETH_PREFIX}{self.index}"

    @property
    def veth_peer(self) -> str:
        return f"{VETH_PREFIX}{self.index}p"

    @property
    def mac(self) -> str:
        """The node's own MAC (locally administered, fixed per index): a node made again at the same address keeps
        it, so the neighbour caches of the host and the other nodes stay right (a new random one would leave them
        sending to a MAC that is gone until their entries time out, some 10-50 s)."""
        return f"02:cb:13:00:{self.index >> 8:02x}:{self.index & 0xff:02x}"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.name}"

    @property
    def dir(self) -> Path:
        return NODES_DIR / self.name

    @property
    def docker_socket(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def docker_url(self) -> str:
        return f"unix://{self.docker_socket}"

    @property
    def data_root(self) -> Path:
        return self.dir / "docker"

    @property
    def exec_root(self) -> Path:
        return self.dir / "exec"

    @property
    def docker_pidfile(self) -> Path:
        return self.dir / "docker.pid"

    @property
    def docker_log(self) -> Path:
        return self.dir / "dockerd.log"

    @property
    def docker_config(self) -> Path:
        return self.dir / "daemon.json"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def sshd_pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def worker_json(self) -> Path:
        return self.dir / "worker.json"

    @property
    def cgroup_parent(self) -> str:
        return f"cumulus-{self.name}"


def nodes_for(workers: int) -> list[Node]:
    return [Node(i) for i in range(workers + 1)]


def supervisor_key() -> Path:
    return KEYS_DIR / "id_ed25519"


def known_hosts() -> Path:
    return KEYS_DIR / "known_hosts"


def load_cluster(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The cluster description written by ``cumulus local up`` (raises FileNotFoundError if there is none)."""
    p = Path(path) if path else CLUSTER_JSON
    try:
        with open(p) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no local cluster description at {p}: run `cumulus local up`") from None


def write_json(path: Path, data: Any) -> bool:
    """Atomic write; returns False (and leaves the file alone) when the content is unchanged."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def build_description(nodes: list[Node], node_ids: dict[Node, str], worker_docs: dict[Node, dict[str, Any]],
                      image_id: str, images: dict[str, str] | None = None) -> dict[str, Any]:
    """The cluster description `up` writes to cluster.json (see the module docstring)."""
    manager = nodes[0]
    key = supervisor_key()
    out_nodes = []
    for n in nodes:
        doc = worker_docs.get(n, {})
        out_nodes.append({
            "index": n.index,
            "name": n.name,
            "role": n.role,
            "node_id": node_ids[n],
            "hostname": n.name,
            "address": n.address,
            "ssh": n.ssh,
            "netns": n.name,
            "docker_socket": str(n.docker_socket),
            "docker_pidfile": str(n.docker_pidfile),
            "sshd_pidfile": str(n.sshd_pidfile) if n.index else None,
            "worker_json": str(n.worker_json) if n.index else None,
            "host_key": doc.get("host_key"),
            "labels": doc.get("labels") or ({"cumulus.worker": "false", "cumulus.role": "manager"}
                                            if n.index == 0 else {}),
            "inventory": doc.get("inventory", {"devices": [], "gpu_count": 0}),
        })
    return {
        "version": 1,
        "state_dir": str(STATE_DIR),
        "manager_socket": str(manager.docker_socket),
        "manager_address": f"{manager.address}:{SWARM_PORT}",
        "bridge": BRIDGE,
        "subnet": SUBNET,
        "image_id": image_id,
        "images": dict(images or {"3.11": image_id}),  # by Python minor version: config.ClusterSettings.images
        "image_tag": IMAGE_TAG,
        "ssh_user": SSH_USER,
        "ssh_key": str(key),
        "ssh_public_key": " ".join(key.with_suffix(".pub").read_text().split()[:2]),
        "known_hosts": str(known_hosts()),
        "holder": HOLDER,
        "chronos_available": CHRONOS_AVAILABLE,
        "jobs_dir": JOBS_DIR,
        "nodes": out_nodes,
    }
