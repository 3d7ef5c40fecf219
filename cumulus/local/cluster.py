"""`cumulus local up/down/status/kill-node/revive-node`: orchestration of the local multi-node cluster.

Layout: bridge ``cumulus0`` (host side 10.213.0.1/24); node i is network namespace ``cw<i>`` at 10.213.0.(10+i)
with its own dockerd (socket ``/var/lib/cumulus-local/nodes/cw<i>/docker.sock``); cw0 is the Swarm manager,
cw1..cwN are workers, each with an sshd on <address>:22 for user ``cumulus`` and set up by
``worker_image/setup-worker.sh`` exactly as a real worker host is.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

from cumulus.local import children, daemons, image, netns, nodes, state, teardown
from cumulus.local import deployed, registry_trust
from cumulus.local import supervisor as local_supervisor
from cumulus.local.util import LocalClusterError, Progress, require_root, run

APT_PACKAGES = [
    "docker.io", "debootstrap", "openssh-server", "openssh-client", "iproute2", "util-linux", "kmod", "procps",
    "tar", "g++", "cmake", "make", "ocl-icd-opencl-dev", "opencl-headers", "pocl-opencl-icd", "clinfo",
    "python3", "python3-venv", "python3-dev", "ca-certificates",
]
DISPATCHER_HEARTBEAT = "2s"  # a killed node is reported Down after a few heartbeats (~6-10 s)


def missing_packages(pkgs: list[str]) -> list[str]:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *pkgs], capture_output=True, text=True)
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.endswith("install ok installed")}
    return [p for p in pkgs if p not in installed]


def _dpkg_interrupted() -> bool:
    """Whether dpkg has half-configured packages or pending triggers (what `dpkg --audit` reports)."""
    proc = subprocess.run(["dpkg", "--audit"], capture_output=True, text=True)
    return bool(proc.stdout.strip())


def ensure_packages(on_line: Callable[[str], None] | None = None) -> str:
    """Install the Debian packages the cluster needs that are missing. An apt or dpkg run that an interrupted
    `up` left behind is waited for (apt's lock timeout) and a half-configured dpkg is finished first, also when
    nothing is missing: an `up` interrupted while dpkg ran triggers leaves every package installed but dpkg
    refusing all later apt runs, this machine's and its user's."""
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    wait_lock = ["-o", "DPkg::Lock::Timeout=600"]
    missing = missing_packages(APT_PACKAGES)
    if not missing:
        if not _dpkg_interrupted():
            return "all present"
        children.run(["dpkg", "--configure", "-a"], env=env, timeout=900, on_line=on_line)
        return "all present; finished an interrupted dpkg run"
    children.run(["apt-get", *wait_lock, "update", "-q"], env=env, timeout=900, on_line=on_line)
    children.run(["dpkg", "--configure", "-a"], env=env, timeout=900, on_line=on_line)
    children.run(["apt-get", *wait_lock, "install", "-y", "-q", "--no-install-recommends", *missing], env=env,
                 timeout=1800, on_line=on_line)
    return "installed " + " ".join(missing)


def _swarm_info(node: state.Node) -> dict[str, Any]:
    _, info = daemons.docker_api(node.docker_socket, "/info", timeout=10)
    return info.get("Swarm", {}) if isinstance(info, dict) else {}


def _manager_nodes(manager: state.Node) -> list[dict[str, Any]]:
    status, nodes = daemons.docker_api(manager.docker_socket, "/nodes", timeout=10)
    if status != 200 or not isinstance(nodes, list):
        raise LocalClusterError(f"manager /nodes failed: {status} {nodes}")
    return nodes


def ensure_swarm(manager: state.Node) -> tuple[str, str]:
    """Init the Swarm on the manager (cw0) if needed. Returns (worker join token, note)."""
    docker = [image.docker(), "-H", manager.docker_url]
    note = "already active"
    if _swarm_info(manager).get("LocalNodeState") != "active":
        run(docker + ["swarm", "init", "--advertise-addr", manager.address,
                      "--listen-addr", f"{manager.address}:{state.SWARM_PORT}",
                      "--dispatcher-heartbeat", DISPATCHER_HEARTBEAT])
        # No routing mesh: jobs use the host or no network; an overlay would create docker_gwbridge (172.17/16).
        subprocess.run(docker + ["network", "rm", "ingress"], input="y\n", capture_output=True, text=True)
        note = "initialised"
    token = run(docker + ["swarm", "join-token", "-q", "worker"]).stdout.strip()
    return token, note


def ensure_supervisor_key() -> bool:
    key = state.supervisor_key()
    if key.exists() and key.with_suffix(".pub").exists():
        return False
    state.KEYS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    key.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cumulus-supervisor@local", "-f", str(key)])
    return True


def run_setup_worker(node: state.Node, manager: state.Node, token: str, verbose: bool,
                     on_line: Callable[[str], None] | None = None) -> str:
    script = state.worker_image_dir() / "setup-worker.sh"
    cmd = ["bash", str(script),
           "--manager", f"{manager.address}:{state.SWARM_PORT}", "--token", token,
           "--supervisor-key-file", str(state.supervisor_key().with_suffix(".pub")),
           "--docker-host", node.docker_url,
           "--ssh-address", node.ssh or "",
           "--advertise-addr", node.address,
           "--hostname", node.name,
           "--host-key-file", str(node.host_key.with_suffix(".pub")),
           "--output", str(node.worker_json)]
    def show(line: str) -> None:
        if verbose:
            print(f"{node.name}: {line}", file=sys.stderr, flush=True)
        elif on_line is not None:
            on_line(f"{node.name}: {line}")

    proc = children.run(cmd, timeout=1800, check=False, on_line=show)
    if proc.returncode != 0:
        raise LocalClusterError(f"setup-worker.sh failed on {node.name} (rc={proc.returncode}):\n"
                                f"{proc.stdout[-4000:]}")
    last = [line for line in proc.stdout.splitlines() if "done:" in line]
    return last[-1].split("done:", 1)[1].strip() if last else "ok"


def ensure_labels(manager: state.Node, node_id: str, labels: dict[str, str]) -> bool:
    _, spec = daemons.docker_api(manager.docker_socket, f"/nodes/{node_id}", timeout=10)
    current = (spec.get("Spec", {}) or {}).get("Labels") or {}
    todo = {k: v for k, v in labels.items() if current.get(k) != v}
    if not todo:
        return False
    cmd = [image.docker(), "-H", manager.docker_url, "node", "update"]
    for k, v in todo.items():
        cmd += ["--label-add", f"{k}={v}"]
    run(cmd + [node_id])
    return True


def wait_ready(manager: state.Node, node_ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {n["ID"]: n.get("Status", {}).get("State") for n in _manager_nodes(manager)}
        if all(states.get(i) == "ready" for i in node_ids):
            return
        if time.monotonic() > deadline:
            raise LocalClusterError(f"nodes not Ready after {timeout}s: {states}")
        time.sleep(0.2)


def existing_worker_count() -> int | None:
    try:
        c = state.load_cluster()
    except (FileNotFoundError, ValueError):
        return None
    return sum(1 for n in c.get("nodes", []) if n.get("role") == "worker")


def up(workers: int | None, verbose: bool = False, quiet: bool = False, supervisor_deployed: bool = False
       ) -> dict[str, Any]:
    """Create or complete the cluster (idempotent). One `up` or `down` runs at a time (a machine-wide lock).

    Interrupted at any step (Ctrl-C, SIGTERM, an error; SIGKILL too, by the next run), it leaves nothing
    running, and the next `up` completes the cluster: what an interrupted run left running is stopped first,
    and the unfinished base rootfs is released (processes, mounts) before it is deleted. ``supervisor_deployed``:
    the supervisor runs as a Swarm service on cw0 (:mod:`cumulus.local.deployed`), else as a process here.
    """
    require_root()
    p = Progress(quiet)
    existing = existing_worker_count()
    if workers is None:
        workers = existing or 2
    if existing and workers < existing:
        raise LocalClusterError(f"the cluster has {existing} workers; run `cumulus local down` to shrink it")
    if not 1 <= workers < state.MAX_NODES:
        raise LocalClusterError(f"--workers must be between 1 and {state.MAX_NODES - 1}")
    with _sigterm_as_exit(), children.run_lock("up", p.log):
        stopped = children.stop_leftovers()
        if stopped:
            p.log(f"stopped {stopped} process(es) left running by an interrupted earlier run")
        try:
            return _up(p, state.nodes_for(workers), verbose, supervisor_deployed)
        except BaseException:
            children.stop_all()
            raise


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (so the steps' children are stopped), not a silent death."""
    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _up(p: Progress, nodes: list[state.Node], verbose: bool, supervisor_deployed: bool) -> dict[str, Any]:
    p.log(f"cumulus local up: 1 manager + {len(nodes) - 1} workers, state in {state.STATE_DIR}")
    t0 = time.monotonic()

    with p.step("packages (apt)") as s:
        s["note"] = ensure_packages(p.detail("apt"))
    # The offline base image (debootstrap, ~45 s the first time) is made in the background meanwhile.
    base_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    base_future = base_pool.submit(image.ensure_base_tarballs, p.detail("debootstrap"))
    try:
        return _up_nodes(p, nodes, verbose, base_future, t0, supervisor_deployed)
    except BaseException:
        children.stop_all()  # the background debootstrap too
        base_pool.shutdown(wait=True, cancel_futures=True)
        image.release_rootfs()
        raise
    finally:
        base_pool.shutdown(wait=False)


def _up_nodes(p: Progress, nodes: list[state.Node], verbose: bool,
              base_future: concurrent.futures.Future[str], t0: float, supervisor_deployed: bool
              ) -> dict[str, Any]:
    manager, worker_nodes = nodes[0], nodes[1:]
    with p.step("network: bridge + namespaces") as s:
        s["note"] = netns.disable_bridge_netfilter()
        changed = netns.ensure_bridge()
        for n in nodes:
            changed |= netns.ensure_netns(n)
        s["note"] += ", changed" if changed else ", unchanged"
    with p.step("dockerd per node") as s:
        state.STATE_DIR.mkdir(parents=True, exist_ok=True)
        procs = {n: daemons.start_dockerd(n) for n in nodes}
        for n, proc in procs.items():
            daemons.wait_dockerd(n, proc)
        started = [n.name for n, proc in procs.items() if proc is not None]
        s["note"] = f"started {', '.join(started)}" if started else "all running"
    with p.step("swarm init (manager cw0)") as s:
        token, s["note"] = ensure_swarm(manager)
    with p.step("ssh keys + sshd per worker") as s:
        new_key = ensure_supervisor_key()
        started = [n.name for n in worker_nodes if daemons.start_sshd(n)]
        for n in worker_nodes:
            daemons.wait_sshd(n)
        s["note"] = (("new supervisor key, " if new_key else "")
                     + (f"started {', '.join(started)}" if started else "all running"))
    with p.step("setup-worker.sh per worker") as s:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(worker_nodes)) as ex:
            detail = p.detail("setup-worker")
            results = list(ex.map(lambda n: run_setup_worker(n, manager, token, verbose, detail), worker_nodes))
        s["note"] = "; ".join(f"{n.name}: {r}" for n, r in zip(worker_nodes, results))
    with p.step("worker image on every node") as s:
        base_note = base_future.result()
        previous: dict[str, str] = {}
        try:
            previous = state.load_cluster().get("images") or {}
        except (FileNotFoundError, ValueError):
            pass
        images, note = image.ensure_images(nodes, previous, p.detail("image"))
        image_id = images[image.IMAGE_PYTHON]
        s["note"] = f"base {base_note}; {note}"
    with p.step("node labels + cluster description") as s:
        node_ids = {n: _swarm_info(n).get("NodeID") for n in nodes}
        if not all(node_ids.values()):
            raise LocalClusterError(f"some nodes are not in the swarm: {node_ids}")
        # forget nodes that a previous, broken run left behind in the manager's list
        for entry in _manager_nodes(manager):
            if entry["ID"] not in node_ids.values() and entry.get("Status", {}).get("State") == "down":
                subprocess.run([image.docker(), "-H", manager.docker_url, "node", "rm", "--force", entry["ID"]],
                               capture_output=True)
        changed = ensure_labels(manager, node_ids[manager], {"cumulus.worker": "false", "cumulus.role": "manager"})
        worker_docs = {}
        for n in worker_nodes:
            doc = json.loads(n.worker_json.read_text())
            worker_docs[n] = doc
            changed |= ensure_labels(manager, node_ids[n], {**doc["labels"], "cumulus.role": "worker",
                                                            "cumulus.worker_image": ",".join(sorted(images.values()))})  # loaded above
        kh_lines = []
        for n in worker_nodes:
            host_key = worker_docs[n].get("host_key") or " ".join(
                n.host_key.with_suffix(".pub").read_text().split()[:2])
            kh_lines.append(f"{n.address} {host_key}")
        kh_text = "\n".join(kh_lines) + "\n"
        if not state.known_hosts().exists() or state.known_hosts().read_text() != kh_text:
            state.known_hosts().write_text(kh_text)
            changed = True
        description = state.build_description(nodes, node_ids, worker_docs, image_id, images)
        changed |= state.write_json(state.CLUSTER_JSON, description)
        s["note"] = "changed" if changed else "unchanged"
    with p.step("all nodes Ready"):
        wait_ready(manager, list(node_ids.values()))
    with p.step("supervisor" + (" (Swarm service)" if supervisor_deployed else "")) as s:
        trusted = registry_trust.trust_local_registries(local_supervisor.credentials().ca)  # worker image pulls
        s["note"] = ", ".join(filter(None, [deployed.ensure_supervisor(supervisor_deployed,
                                                                       p.detail("supervisor image")), trusted]))
    p.log(f"cluster up in {time.monotonic() - t0:.1f}s: {state.CLUSTER_JSON}")
    return description


# ------------------------------------------------------------------------------------------------ status
def status() -> dict[str, Any]:
    cluster = state.load_cluster()
    manager = state.Node(0)
    live: dict[str, dict[str, Any]] = {}
    manager_ok = daemons.docker_ping(manager.docker_socket)
    if manager_ok:
        try:
            live = {n["ID"]: n for n in _manager_nodes(manager)}
        except (OSError, LocalClusterError):
            manager_ok = False
    for entry in cluster["nodes"]:
        n = state.Node(entry["index"])
        info = live.get(entry["node_id"], {})
        raw = info.get("Status", {}).get("State") if manager_ok else None
        entry["state"] = {"ready": "Ready", "down": "Down"}.get(raw, (raw or "unknown").capitalize())
        entry["availability"] = info.get("Spec", {}).get("Availability")
        entry["dockerd"] = "running" if daemons.dockerd_pid(n) else "stopped"
        if n.index:
            entry["sshd"] = "running" if daemons.sshd_pid(n) else "stopped"
    cluster.update(deployed.status())
    cluster["added_nodes"] = nodes.status(list(live.values()) if manager_ok else None)  # not in "ready"
    cluster["manager_reachable"] = manager_ok
    cluster["ready"] = manager_ok and all(e["state"] == "Ready" for e in cluster["nodes"])
    return cluster


def format_status(c: dict[str, Any]) -> str:
    lines = [f"manager socket: {c['manager_socket']}   image: {c['image_id'][:19]}   "
             f"ssh user: {c['ssh_user']}   ready: {'yes' if c['ready'] else 'NO'}",
             deployed.status_line(c)]
    hdr = f"{'NODE':<5} {'ROLE':<8} {'STATE':<8} {'NODE ID':<26} {'SSH':<16} {'DOCKERD':<8} {'SSHD':<8} DEVICES"
    lines.append(hdr)
    for n in c["nodes"]:
        devs = ", ".join(f"{d['index']}:{d['name'][:24]}({d['kind']})" for d in n["inventory"].get("devices", []))
        lines.append(f"{n['name']:<5} {n['role']:<8} {n['state']:<8} {n['node_id']:<26} {n['ssh'] or '-':<16} "
                     f"{n['dockerd']:<8} {n.get('sshd', '-'):<8} {devs or '-'}")
    return "\n".join(lines + nodes.format_status(c.get("added_nodes", [])))


# ------------------------------------------------------------------------------------------------ failures
def _worker(index: int) -> state.Node:
    c = state.load_cluster()
    if index not in {n["index"] for n in c["nodes"] if n["role"] == "worker"}:
        raise LocalClusterError(f"no worker {index} (workers: "
                                f"{[n['index'] for n in c['nodes'] if n['role'] == 'worker']})")
    return state.Node(index)


def _node_state(node_id: str) -> str | None:
    for n in _manager_nodes(state.Node(0)):
        if n["ID"] == node_id:
            return n.get("Status", {}).get("State")
    return None


def _node_id(index: int) -> str:
    return next(n["node_id"] for n in state.load_cluster()["nodes"] if n["index"] == index)


def kill_node(index: int, wait: bool = True, timeout: float = 60, quiet: bool = False) -> None:
    """Like the machine dying: SIGKILL its dockerd, containerd, containers and sshd (every process in its netns)."""
    require_root()
    node = _worker(index)
    p = Progress(quiet)
    with p.step(f"kill {node.name}") as s:
        s["note"] = f"{teardown.kill_node_processes(node)} process(es) killed"
    if wait:
        with p.step(f"manager reports {node.name} Down"):
            deadline = time.monotonic() + timeout
            while _node_state(_node_id(index)) != "down":
                if time.monotonic() > deadline:
                    raise LocalClusterError(f"{node.name} still not Down after {timeout}s")
                time.sleep(0.25)


def revive_node(index: int, wait: bool = True, timeout: float = 90, quiet: bool = False) -> None:
    require_root()
    node = _worker(index)
    p = Progress(quiet)
    with p.step(f"restart dockerd + sshd of {node.name}"):
        netns.ensure_bridge()
        netns.ensure_netns(node)
        proc = daemons.start_dockerd(node)
        daemons.wait_dockerd(node, proc)
        if node.role == "worker":
            daemons.ensure_job_network_config(node)
        daemons.start_sshd(node)
        daemons.wait_sshd(node)
    if wait:
        with p.step(f"manager reports {node.name} Ready"):
            wait_ready(state.Node(0), [_node_id(index)], timeout)
