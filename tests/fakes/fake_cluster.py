"""In-memory fakes of the Swarm manager and of worker hosts, for fast unit tests of actor logic only.

``FakeWorld`` is the shared state (partitions, job dirs, services and their fake containers). A fake container's
behaviour comes from its job's env: ``FAKE_RUNTIME`` seconds (default 1), ``FAKE_EXIT`` code (default 0; 1 writes
a failure envelope), ``FAKE_NO_RESULT=1`` (exits without an envelope). A training loop instead with
``FAKE_STEPS=N``: N steps of ``FAKE_STEP_SECONDS`` (default 0.1) from the restored checkpoint's step on, a checkpoint
every ``FAKE_SAVE_EVERY`` steps (default 1; its bytes say the step), stopping at a pause request (exit 3, as the runner)
unless ``FAKE_IGNORE_PAUSE=1``; its result is ``ok:<job id>:<last step>``. Every operation takes a little (virtual)
time, so that cancellations can land in the middle of each one. Nothing here talks to Docker or SSH.

A class instance's channel (:class:`FakeInstanceChannel`) serves while its job's container runs: a call's reply
envelope is ok with the call's own args as its value (the supervisor never unpickles it), or not ok for the method
``fail``; ``slow`` answers after a second; ``crash`` ends the container (exit 137, as if it died); the world counts
each job's calls that ran (``instance_calls``).
"""

from __future__ import annotations

import itertools
import math
import json
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Iterator

import docker.errors
import msgpack
import trio

from cumulus.backends import Backends, NodeOrphans
from cumulus.resources.checkpoint_store import StoredCheckpoint
from cumulus.resources.instance_channel import InstanceChannelLost, InstanceNotServing
from cumulus.resources.partition import LeaseLoss
from cumulus.resources.ssh import SshError
from cumulus.resources.swarm import ServiceHandle, SwarmError
from cumulus.resources.swarm import LABEL_JOB, LABEL_SUPERVISOR, NodeInfo, ServiceRequest, TaskState
from cumulus.resources.swarm_client import SwarmJoinInfo
from cumulus.resources.warm import WarmDirs, WarmServiceGone

DELAY = 0.05


def fake_node(index: int, devices: int = 1, gpu: bool = True) -> NodeInfo:
    import json

    inventory = [{"index": i, "name": f"Fake GPU {i}", "kind": "gpu" if gpu else "cpu", "is_gpu": gpu,
                  "memory_bytes": 16 << 30, "uuid": f"GPU-fake-{index}-{i}" if gpu else None}
                 for i in range(devices)]
    return NodeInfo(id=f"fakenode{index:04d}", hostname=f"fw{index}", state="ready", availability="active",
                    role="worker", labels={"cumulus.worker": "true", "cumulus.ssh": f"10.213.0.{10 + index}:22",
                                           "cumulus.devices": json.dumps(inventory)}, address=None)


@dataclass
class FakeContainer:
    service_id: str
    job_id: str
    node_id: str
    env: dict[str, str]
    state: str = "pending"
    exit_code: int | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)
    log_event: trio.Event = field(default_factory=trio.Event)
    stop: trio.Event = field(default_factory=trio.Event)
    gone: trio.Event = field(default_factory=trio.Event)
    engine_messages_sent: int = 0
    warm_start: trio.Event | None = None  # a warm service's: set when a job is handed to it (its env then merged)
    killed: trio.Event = field(default_factory=trio.Event)  # `docker kill` of a warm container: it fails, stays
    mount_dir: str = ""  # the name of the job directory its code and output are bind-mounted from


@dataclass
class FakePartition:
    partition_id: str
    node: str
    device: int
    fraction: float
    job_id: str
    lost: trio.Event = field(default_factory=trio.Event)
    lost_reason: str = ""
    lost_cause: LeaseLoss | None = None
    renewed_at: float = 0.0

    @property
    def holder_pid(self) -> int:
        return hash(self.partition_id) % 100000


class FakeCheckpointStore:
    """An in-memory CheckpointStore (no threads: under an autojump clock a thread would let virtual time run)."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self.jobs: dict[str, list[tuple[StoredCheckpoint, bytes]]] = {}
        self._seq = itertools.count(1)

    async def put(self, job_id: str, step: int, data: bytes) -> StoredCheckpoint:
        await trio.sleep(0)
        stored = StoredCheckpoint(job_id, next(self._seq), step, len(data), trio.current_time())
        kept = self.jobs.setdefault(job_id, [])
        kept.append((stored, data))
        del kept[:-self.keep]
        return stored

    async def latest(self, job_id: str) -> StoredCheckpoint | None:
        await trio.sleep(0)
        kept = self.jobs.get(job_id)
        return kept[-1][0] if kept else None

    async def read(self, checkpoint: StoredCheckpoint) -> bytes:
        await trio.sleep(0)
        for stored, data in self.jobs.get(checkpoint.job_id, []):
            if stored == checkpoint:
                return data
        raise FileNotFoundError(checkpoint)

    async def list(self, job_id: str) -> list[StoredCheckpoint]:
        await trio.sleep(0)
        return [stored for stored, _ in self.jobs.get(job_id, [])]

    async def remove_job(self, job_id: str) -> int:
        await trio.sleep(0)
        return len(self.jobs.pop(job_id, []))


class FakeWorld:
    def __init__(self, nodes: list[NodeInfo], nursery: trio.Nursery) -> None:
        self.nodes = nodes
        self.nursery = nursery
        self.partitions: dict[str, FakePartition] = {}
        self.job_dirs: set[tuple[str, str]] = set()
        self.uploads: list[tuple[str, bytes]] = []  # (job id, package) of every job directory made
        self.outputs: dict[str, bytes] = {}
        self.services: dict[str, FakeContainer] = {}
        self.services_labels: dict[str, dict[str, str]] = {}
        self.running: set[str] = set()  # service ids whose container process is alive
        self.unreachable: set[str] = set()  # hostnames whose SSH is cut
        self.instance_calls: dict[str, list[str]] = {}  # an instance's job id -> the methods its calls ran
        self.not_isolated: dict[str, str] = {}  # hostname -> why its job isolation check fails
        self.max_used: dict[tuple[str, int], float] = {}
        self.frozen = False  # set when the supervisor "dies": nothing it owned gets released
        self.lease_ttl = 30.0
        self.secrets: dict[str, tuple[dict[str, str], dict[str, str]]] = {}  # id -> (labels, values)
        self.secret_log: list[str] = []  # "created NAME" / "removed NAME (service left: N)", in order
        self.saved_images: dict[str, bytes] = {}  # image id -> its `docker save` tar, on the fake manager
        self.pulls: list[tuple[str, str]] = []  # (node id, reference) of every image pull asked for
        self.pull_failure: str = ""  # set: every image pull fails with this reason
        self.checkpoint_files: dict[str, dict[str, bytes]] = {}  # job id -> its output/checkpoints on its worker
        self.restores: list[tuple[str, bytes]] = []  # (job id, checkpoint) uploaded for each attempt that resumed
        self.pause_requests: set[str] = set()  # job ids whose pause file exists
        self.steps_run: dict[str, list[int]] = {}  # job id -> every step its training loops ran, in order
        self.checkpoint_store = FakeCheckpointStore()
        self.warm_taken: dict[str, str] = {}  # job id -> the warm id whose directories it took
        self.warm_jobs: dict[str, list[str]] = {}  # warm service id -> the job ids handed to it (never more than 1)
        self._ids = itertools.count(1)

    def backends(self) -> Backends:
        return Backends(open_swarm=self.open_swarm, connect_node=self.connect_node,
                        open_checkpoints=self.open_checkpoints, needs_asyncio=False)

    @contextmanager
    def open_checkpoints(self, settings: Any) -> Iterator[FakeCheckpointStore]:
        """The supervisor's checkpoint store, in memory (it outlives a supervisor "restart", as a directory does)."""
        self.checkpoint_store.keep = settings.jobs.checkpoint_retention
        yield self.checkpoint_store

    # ---- swarm ----------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def open_swarm(self, settings: Any) -> AsyncIterator[FakeSwarm]:
        yield FakeSwarm(self, getattr(settings, "supervisor_id", ""))

    @asynccontextmanager
    async def connect_node(self, node: NodeInfo, settings: Any) -> AsyncIterator[FakeNode]:
        await trio.sleep(DELAY)
        if node.hostname in self.unreachable:
            raise SshError(node.hostname, "connect", "connection refused")
        yield FakeNode(self, node)

    async def expire_when_not_renewed(self, partition: FakePartition) -> None:
        """The holder's dead-man switch: not renewed within the TTL -> release, and the container stops."""
        while partition.partition_id in self.partitions:
            await trio.sleep(1)
            if trio.current_time() - partition.renewed_at > self.lease_ttl:
                self.partitions.pop(partition.partition_id, None)
                for container in self.services.values():  # a container that ended already stays, like its service
                    if container.job_id == partition.job_id and container.state not in ("complete", "failed"):
                        container.stop.set()
                return

    def cut(self, hostname: str) -> None:
        """The node's SSH goes away: connections fail, and every partition held over them is lost."""
        self.unreachable.add(hostname)
        for partition in self.partitions.values():
            if partition.node == hostname:
                partition.lost_reason = "connection lost: fake network cut"
                partition.lost_cause = LeaseLoss.NODE_UNREACHABLE
                partition.lost.set()

    def restore(self, hostname: str) -> None:
        self.unreachable.discard(hostname)

    def _idle_warm(self, service_id: str) -> bool:
        label = self.services_labels.get(service_id, {}).get(LABEL_JOB, "")
        return "-warm-" in label and service_id not in self.warm_jobs

    def job_services(self) -> dict[str, FakeContainer]:
        """The services left but the idle warm ones (a warm service that took a job counts as the job's). Checks
        on the way that no warm container was ever handed a second job."""
        assert all(len(jobs) == 1 for jobs in self.warm_jobs.values()), self.warm_jobs
        return {sid: c for sid, c in self.services.items() if not self._idle_warm(sid)}

    def job_dirs_left(self) -> set[tuple[str, str]]:
        """The job directories left but the idle warm services' ones (a job that took one renamed it)."""
        return {(node, name) for node, name in self.job_dirs if "-warm-" not in name}

    def running_jobs(self) -> set[str]:
        return {sid for sid in self.running if not self._idle_warm(sid)}

    def used_share(self, node: str, device: int) -> float:
        return sum(p.fraction for p in self.partitions.values() if p.node == node and p.device == device)

    async def run_training(self, container: FakeContainer) -> int:
        """The FAKE_STEPS loop: its exit code (0 done, 3 paused), or -1 when stopped."""
        env, job_id = container.env, container.job_id
        first = int(env.get("CUMULUS_CHECKPOINT_RESTORE_STEP", "-1")) + 1
        every = int(env.get("FAKE_SAVE_EVERY", "1"))
        step = first - 1
        for step in range(first, int(env["FAKE_STEPS"])):
            if job_id in self.pause_requests and env.get("FAKE_IGNORE_PAUSE") != "1":
                return 3
            with trio.move_on_after(float(env.get("FAKE_STEP_SECONDS", "0.1"))):
                await container.stop.wait()
            if container.stop.is_set():
                return -1
            self.steps_run.setdefault(job_id, []).append(step)
            if (step + 1) % every == 0:
                name = f"ckpt-{step + 1:08d}-{step}.bin"
                folder = self.checkpoint_files.setdefault(job_id, {})
                folder[name] = f"step {step}".encode()
                for old in sorted(folder)[:-2]:  # the in-job API keeps the newest two
                    del folder[old]
                container.logs.append(("stderr", f"[cumulus] checkpoint {name} ({len(folder[name])} bytes)"))
                container.log_event.set()
        self.outputs[job_id] = f"ok:{job_id}:{step}".encode()
        return 0

    async def run_container(self, container: FakeContainer) -> None:
        await trio.sleep(DELAY * 2)
        if container.stop.is_set():
            container.state = "shutdown"
            return
        hostname = next(n.hostname for n in self.nodes if n.id == container.node_id)
        if (hostname, container.mount_dir) not in self.job_dirs:  # like Docker: a bind source must exist
            container.state = "rejected"
            return
        container.state = "running"
        self.running.add(container.service_id)
        if container.warm_start is not None:  # a warm runner: waits for its one job, or is stopped first
            with trio.CancelScope() as waiting:
                self.nursery.start_soon(_cancel_when, container.stop, waiting)
                self.nursery.start_soon(_cancel_when, container.killed, waiting)
                await container.warm_start.wait()
            if not container.warm_start.is_set():
                self.running.discard(container.service_id)
                container.state, container.exit_code = ("failed", 137) if container.killed.is_set() else ("shutdown", 143)
                return
        runtime = float(container.env.get("FAKE_RUNTIME", "1"))
        exit_code = int(container.env.get("FAKE_EXIT", "0"))
        try:
            container.logs.append(("stdout", f"hello from {container.job_id}"))
            container.log_event.set()
            if "FAKE_STEPS" in container.env:
                exit_code = await self.run_training(container)
            else:
                with trio.move_on_after(runtime) as running:
                    self.nursery.start_soon(_cancel_when, container.killed, running)
                    await container.stop.wait()
            if container.killed.is_set():  # it died (an instance's ``crash``): it fails, its service stays
                container.state, container.exit_code = "failed", 137
                return
            if container.stop.is_set():
                await trio.sleep(DELAY)  # SIGTERM -> init -> exit
                container.state, container.exit_code = "shutdown", 143
                return
            if container.env.get("FAKE_NO_RESULT") != "1" and exit_code != 3 and "FAKE_STEPS" not in container.env:
                self.outputs[container.job_id] = f"{'ok' if exit_code == 0 else 'err'}:{container.job_id}".encode()
            # Like Docker: the two streams are not kept in order relative to each other (FAKE_LATE_STDOUT lines
            # of stdout come after the runner's stderr marker).
            late = int(container.env.get("FAKE_LATE_STDOUT", "0"))
            end = {0: "finished", 3: "paused"}.get(exit_code, "failed")
            container.logs.append(("stderr", f"[cumulus] job {end} in 1 s"))
            container.logs.extend(("stdout", f"late line {i}") for i in range(late))
            container.logs.append(("stdout", "[cumulus] end of stdout"))
            container.log_event.set()
            # FAKE_LINGER: the process does not exit after the runner's last line (a non-daemon thread left).
            with trio.move_on_after(float(container.env.get("FAKE_LINGER", "0"))):
                await container.stop.wait()
            if container.stop.is_set():
                container.state, container.exit_code = "shutdown", 143
                return
            container.state, container.exit_code = ("complete" if exit_code == 0 else "failed"), exit_code
        finally:
            self.running.discard(container.service_id)


class FakeSwarm:
    def __init__(self, world: FakeWorld, supervisor_id: str = "") -> None:
        self.world = world
        self.supervisor_id = supervisor_id

    @asynccontextmanager
    async def open_service(self, request: ServiceRequest) -> AsyncIterator[Any]:
        world = self.world
        await trio.sleep(DELAY)
        service_id = f"svc{next(world._ids)}"
        container = FakeContainer(service_id, request.job_id, request.node_id, dict(request.env),
                                  warm_start=trio.Event() if request.warm else None,
                                  mount_dir=request.code_dir.rstrip("/").rsplit("/", 2)[-2])
        world.services[service_id] = container
        world.services_labels[service_id] = {LABEL_JOB: request.job_id, LABEL_SUPERVISOR: request.supervisor_id}
        world.nursery.start_soon(self._lifecycle, container)
        handle = ServiceHandle(service_id, f"cumulus-{request.job_id}", request.job_id)
        try:
            yield handle
        finally:
            with trio.move_on_after(10, shield=True):
                if not world.frozen and not handle.handed_over:  # a killed supervisor releases nothing
                    await self.remove_service(service_id)
                    await container.gone.wait()
            handle.removal_confirmed = container.gone.is_set()

    @asynccontextmanager
    async def adopt_service(self, service_id: str, job_id: str) -> AsyncIterator[Any]:
        container = self.world.services.get(service_id)
        if container is None:
            raise SwarmError(f"no service {service_id}")
        task_key = self.world.services_labels.get(service_id, {}).get(LABEL_JOB, job_id)  # like the real one's
        handle = ServiceHandle(service_id, f"cumulus-{task_key}", task_key)
        try:
            yield handle
        finally:
            with trio.move_on_after(10, shield=True):
                if not self.world.frozen:
                    await self.remove_service(service_id)
                    await container.gone.wait()
            handle.removal_confirmed = container.gone.is_set()

    def claim_service(self, service_id: str, name: str, task_key: str):
        return self.adopt_service(service_id, task_key)

    async def _lifecycle(self, container: FakeContainer) -> None:
        try:
            await self.world.run_container(container)
        finally:
            await container.stop.wait()  # a finished container stays until its service is removed
            container.gone.set()
            self.world.services.pop(container.service_id, None)
            self.world.services_labels.pop(container.service_id, None)

    @asynccontextmanager
    async def follow_logs(self, service_id: str) -> AsyncIterator[AsyncIterator[tuple[str, str]]]:
        container = self.world.services.get(service_id)

        async def lines() -> AsyncIterator[tuple[str, str]]:
            sent = 0
            while container is not None:
                while sent < len(container.logs):
                    yield container.logs[sent]
                    sent += 1
                    # FAKE_ENGINE_MESSAGE: like a manager that cannot read the node's log (the first
                    # FAKE_ENGINE_MESSAGE_TIMES follows): its message after the first line, then nothing more.
                    message = container.env.get("FAKE_ENGINE_MESSAGE")
                    if message and container.engine_messages_sent < int(
                            container.env.get("FAKE_ENGINE_MESSAGE_TIMES", "1")):
                        container.engine_messages_sent += 1
                        yield "system", message
                        await trio.sleep_forever()
                container.log_event = trio.Event()
                await container.log_event.wait()

        yield lines()

    async def task_states(self, labels: dict[str, str]) -> list[TaskState]:
        await trio.sleep(0)
        tasks = []
        for service_id, container in list(self.world.services.items()):
            if all(self.world.services_labels.get(service_id, {}).get(k) == v for k, v in labels.items()):
                label = self.world.services_labels[service_id][LABEL_JOB]  # a warm one's stays its warm id
                tasks.append(TaskState(service_id, label, f"task-{service_id}", container.state,
                                       "running", container.exit_code, None, None, None, container.node_id, None))
        return tasks

    async def list_nodes(self) -> list[NodeInfo]:
        await trio.sleep(0)
        return list(self.world.nodes)

    async def join_info(self) -> SwarmJoinInfo:
        await trio.sleep(0)
        return SwarmJoinInfo("SWMTKN-1-fake", ("10.213.0.10:2377",))

    async def update_node(self, node_id: str, *, labels_add: dict[str, str] | None = None,
                          labels_remove: tuple[str, ...] = (), availability: str | None = None) -> NodeInfo:
        await trio.sleep(0)
        for i, node in enumerate(self.world.nodes):
            if node.id == node_id:
                labels = {k: v for k, v in node.labels.items() if k not in labels_remove} | (labels_add or {})
                self.world.nodes[i] = replace(node, labels=labels, availability=availability or node.availability)
                return self.world.nodes[i]
        raise docker.errors.NotFound(f"node {node_id} not found")

    async def remove_node(self, node_id: str) -> bool:
        await trio.sleep(0)
        before = len(self.world.nodes)
        self.world.nodes[:] = [n for n in self.world.nodes if n.id != node_id]
        return len(self.world.nodes) < before

    async def list_services(self, labels: dict[str, str]) -> list[Any]:
        return [type("Service", (), {"id": sid, "labels": dict(lab)})()
                for sid, lab in self.world.services_labels.items()
                if all(lab.get(k) == v for k, v in labels.items())]

    async def remove_service(self, service_id: str) -> bool:
        container = self.world.services.get(service_id)
        if container is None:
            return False
        container.stop.set()
        return True

    @asynccontextmanager
    async def open_secret_env(self, job_id: str, attempt: int, values: dict[str, str]) -> AsyncIterator[Any]:
        """Like the real one: a secret per attempt, removed on exit (``secret_log`` notes how many services of
        the job were left then: the service must be gone first)."""
        from cumulus.resources.swarm_secrets import secret_name
        from cumulus.resources.swarm_spec import SecretEnvRef

        await trio.sleep(0)
        secret_id, name = f"sec{next(self.world._ids):07d}xyz", secret_name(job_id, attempt)
        labels = {LABEL_JOB: job_id, LABEL_SUPERVISOR: self.supervisor_id, "name": name}
        self.world.secrets[secret_id] = (labels, dict(values))
        self.world.secret_log.append(f"created {name}")
        try:
            yield SecretEnvRef(secret_id, name)
        finally:
            if not self.world.frozen:
                await self.remove_secret(secret_id)

    @asynccontextmanager
    async def adopt_secret_env(self, job_id: str) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for secret_id, (labels, _) in list(self.world.secrets.items()):
                if labels[LABEL_JOB] == job_id and not self.world.frozen:
                    await self.remove_secret(secret_id)

    async def list_secrets(self, labels: dict[str, str]) -> list[Any]:
        return [type("Secret", (), {"id": sid, "name": lab["name"], "labels": dict(lab)})()
                for sid, (lab, _) in self.world.secrets.items() if all(lab.get(k) == v for k, v in labels.items())]

    @contextmanager
    def save_image(self, image_id: str) -> Iterator[Iterator[bytes]]:
        if image_id not in self.world.saved_images:
            raise SwarmError(f"the image {image_id} is not on the Swarm manager's engine")
        data = self.world.saved_images[image_id]
        yield iter([data[i:i + 65536] for i in range(0, len(data), 65536)])

    async def pull_image(self, node_id: str, reference: str, *, timeout: float, command: tuple[str, ...] = ("true",),
                         mounts: tuple[Any, ...] = ()) -> None:
        from cumulus.resources.image_pull import ImagePullFailed

        await trio.sleep(DELAY)
        self.world.pulls.append((node_id, reference))
        if self.world.pull_failure:
            raise ImagePullFailed(self.world.pull_failure)

    async def remove_secret(self, secret_id: str) -> bool:
        entry = self.world.secrets.pop(secret_id, None)
        if entry is None:
            return False
        left = sum(1 for c in self.world.services.values() if c.job_id == entry[0][LABEL_JOB])
        self.world.secret_log.append(f"removed {entry[0]['name']} (services of the job left: {left})")
        return True


@dataclass(frozen=True)
class FakeResult:
    stdout: str = ""
    exit_status: int = 0


class FakeJobConnection:
    """The few SSH commands a job's files are reached with: its checkpoints listed and read, its pause file made and
    looked for."""

    def __init__(self, world: FakeWorld, hostname: str, job_id: str) -> None:
        self.world, self.label, self.job_id = world, hostname, job_id

    def _reachable(self, what: str) -> None:
        if self.label in self.world.unreachable:
            raise SshError(self.label, what, "connection lost")

    async def run(self, command: str, *, timeout: float = 30, check: bool = True) -> FakeResult:
        await trio.sleep(DELAY / 5)
        self._reachable("run")
        if command.startswith("echo pause"):
            self.world.pause_requests.add(self.job_id)
            return FakeResult()
        if command.startswith("test -e "):  # is its pause file there
            return FakeResult(exit_status=0 if self.job_id in self.world.pause_requests else 1)
        if command.startswith("ls "):
            return FakeResult("\n".join(sorted(self.world.checkpoint_files.get(self.job_id, {}))))
        raise AssertionError(f"the fake worker does not know {command!r}")

    async def get_bytes(self, remote_path: str, max_bytes: int, *, timeout: float | None = None) -> bytes:
        from cumulus.resources.ssh import RemotePathNotFound

        await trio.sleep(DELAY / 5)
        self._reachable("get")
        data = self.world.checkpoint_files.get(self.job_id, {}).get(remote_path.rsplit("/", 1)[-1])
        if data is None:
            raise RemotePathNotFound(self.label, f"get {remote_path}", "no such file")
        return data


class FakeNode:
    def __init__(self, world: FakeWorld, node: NodeInfo) -> None:
        self.world = world
        self.node = node
        self.label = node.hostname
        self.leases: dict[str, FakePartition] = {}
        self.job_user = "1001:1001"
        self.isolation_problem = world.not_isolated.get(node.hostname, "")

    def lease_dir(self, job_id: str) -> str | None:
        return f"/var/lib/cumulus/jobs/.leases/{job_id}"

    @asynccontextmanager
    async def open_partition(self, *, device: int, fraction: float, duration: float, job_id: str,
                             replace_earlier: bool = False, from_warm: str | None = None):
        world = self.world
        await trio.sleep(DELAY)
        if self.node.hostname in world.unreachable:
            raise SshError(self.node.hostname, "create partition", "connection lost")
        partition = FakePartition(f"partition_{next(world._ids)}", self.node.hostname, device, fraction, job_id)
        partition.renewed_at = trio.current_time()
        world.partitions[partition.partition_id] = partition
        world.nursery.start_soon(world.expire_when_not_renewed, partition)
        key = (self.node.hostname, device)
        world.max_used[key] = max(world.max_used.get(key, 0.0), world.used_share(*key))
        async with self._held(partition):
            yield partition

    @asynccontextmanager
    async def adopt_partition(self, *, job_id: str, partition_id: str, device: int, fraction: float):
        partition = self.world.partitions.get(partition_id)
        if partition is None:
            raise SshError(self.node.hostname, "adopt partition", f"the holder of {job_id} is gone")
        partition.lost = trio.Event()  # a fresh lease object for the new owner
        async with self._held(partition):
            yield partition

    @asynccontextmanager
    async def _held(self, partition: FakePartition):
        self.leases[partition.job_id] = partition
        try:
            yield
        finally:
            self.leases.pop(partition.job_id, None)
            with trio.move_on_after(5, shield=True):
                await trio.sleep(DELAY)
            if not self.world.frozen:
                self.world.partitions.pop(partition.partition_id, None)

    async def stop_job(self, job_id: str) -> bool:
        await trio.sleep(DELAY / 5)
        if self.world.frozen:
            return False
        for container in self.world.services.values():
            if container.job_id == job_id:
                container.stop.set()
        return False  # not confirmed on the node: the attempt asks the (fake) Swarm

    def fail_leases(self, reason: str) -> None:
        for partition in self.leases.values():
            if not partition.lost.is_set():
                partition.lost_reason = reason
                partition.lost_cause = LeaseLoss.NODE_UNREACHABLE
                partition.lost.set()

    async def renew_leases(self) -> int:
        await trio.sleep(0)
        if self.node.hostname in self.world.unreachable:
            raise SshError(self.node.hostname, "renew", "connection lost")
        renewed = 0
        for job_id, partition in list(self.leases.items()):
            if partition.partition_id in self.world.partitions:
                partition.renewed_at = trio.current_time()
                renewed += 1
            else:
                partition.lost_reason = "holder gone or lease expired"
                partition.lost_cause = LeaseLoss.HOLDER_GONE
                partition.lost.set()
        return renewed

    @asynccontextmanager
    async def open_job_files(self, *, job_id: str, package: bytes, restore: bytes | None = None,
                             from_warm: str | None = None):
        world = self.world
        await trio.sleep(DELAY)
        if from_warm is not None:  # renamed: the warm directories become the job's
            if (self.node.hostname, from_warm) not in world.job_dirs:
                raise SshError(self.node.hostname, "take warm dirs", f"no directory {from_warm}")
            world.job_dirs.discard((self.node.hostname, from_warm))
            world.warm_taken[job_id] = from_warm
        world.job_dirs.add((self.node.hostname, job_id))
        world.uploads.append((job_id, package))
        world.checkpoint_files[job_id] = {}
        world.pause_requests.discard(job_id)
        if restore is not None:
            world.restores.append((job_id, restore))
        conn = FakeJobConnection(world, self.node.hostname, job_id)

        class Files:
            code_dir = f"/var/lib/cumulus/jobs/{job_id}/code"
            output_dir = f"/var/lib/cumulus/jobs/{job_id}/output"

            def __init__(self) -> None:
                self.conn = conn

            @staticmethod
            async def fetch_result(max_bytes: int) -> bytes | None:
                await trio.sleep(DELAY / 5)
                return world.outputs.get(job_id)

        async with self._files_held(job_id, Files()) as files:
            yield files

    @asynccontextmanager
    async def adopt_job_files(self, *, job_id: str):
        if (self.node.hostname, self.job_id_checked(job_id)) not in self.world.job_dirs:
            raise SshError(self.node.hostname, "adopt files", f"no job dir for {job_id}")
        world = self.world
        conn = FakeJobConnection(world, self.node.hostname, job_id)

        class Files:
            code_dir = f"/var/lib/cumulus/jobs/{job_id}/code"
            output_dir = f"/var/lib/cumulus/jobs/{job_id}/output"

            def __init__(self) -> None:
                self.conn = conn

            @staticmethod
            async def fetch_result(max_bytes: int) -> bytes | None:
                return world.outputs.get(job_id)

        async with self._files_held(job_id, Files()) as files:
            yield files

    @asynccontextmanager
    async def open_warm_dirs(self, warm_id: str, *, claimed: bool = False):
        if not claimed:
            await trio.sleep(DELAY / 5)
            if self.node.hostname in self.world.unreachable:
                raise SshError(self.node.hostname, "warm dirs", "connection lost")
            self.world.job_dirs.add((self.node.hostname, warm_id))
        dirs = WarmDirs(f"/var/lib/cumulus/jobs/{warm_id}", f"/var/lib/cumulus/jobs/{warm_id}/code",
                        f"/var/lib/cumulus/jobs/{warm_id}/output", self.lease_dir(warm_id))
        try:
            yield dirs
        finally:
            if not dirs.handed_over and not self.world.frozen:
                self.world.job_dirs.discard((self.node.hostname, warm_id))

    @asynccontextmanager
    async def open_instance_channel(self, output_dir: str, *, max_frame: int,
                                    socket: str = "instance.sock") -> AsyncIterator[Any]:
        await trio.sleep(DELAY / 10)
        if self.label in self.world.unreachable:
            raise InstanceChannelLost(f"{self.label}: connection lost")
        if socket != "instance.sock":  # the fake jobs make no calls of their own (no calls.sock)
            raise InstanceNotServing(f"{self.label}: nothing listens on {socket}")
        job_id = output_dir.rstrip("/").split("/")[-2]
        dirs = {job_id, self.world.warm_taken.get(job_id)}  # a warm container's mount keeps the warm name
        running = [c for c in self.world.services.values() if c.mount_dir in dirs and c.state == "running"
                   and (c.warm_start is None or c.warm_start.is_set())]
        if not running:
            raise InstanceNotServing(f"{self.label}: nothing listens for {job_id}")
        channel = FakeInstanceChannel(self.world, self.label, running[0], job_id)
        self.world.nursery.start_soon(channel.run)
        try:
            yield channel
        finally:
            channel.scope.cancel()

    async def start_warm_job(self, job_id: str, message: bytes, timeout: float = 3.0) -> None:
        """Like the real one: blocks until the warm container's runner waits (it may still be starting), or until
        ``timeout`` (one that is gone never opens its FIFO)."""
        await trio.sleep(DELAY / 5)
        if self.node.hostname in self.world.unreachable:
            raise SshError(self.node.hostname, "start warm job", "connection lost")
        warm_id = self.world.warm_taken.get(job_id)
        container = None
        with trio.move_on_after(timeout):
            while True:
                if container is None or container.service_id not in self.world.services:
                    container = next((c for c in self.world.services.values() if c.warm_start is not None and
                                      self.world.services_labels.get(c.service_id, {}).get(LABEL_JOB) == warm_id),
                                     None)
                if container is not None and container.state == "running" and not container.stop.is_set() \
                        and not container.killed.is_set() and not container.warm_start.is_set():
                    container.env.update(json.loads(message)["env"])
                    container.job_id = job_id
                    self.world.warm_jobs.setdefault(container.service_id, []).append(job_id)
                    container.warm_start.set()
                    return
                await trio.sleep(DELAY / 5)
                if self.node.hostname in self.world.unreachable:
                    raise SshError(self.node.hostname, "start warm job", "connection lost")
        raise WarmServiceGone(f"the warm container of {job_id} did not take its job")

    @staticmethod
    def job_id_checked(job_id: str) -> str:
        return job_id

    @asynccontextmanager
    async def _files_held(self, job_id: str, files: Any):
        try:
            yield files
        finally:
            with trio.move_on_after(5, shield=True):
                await trio.sleep(DELAY / 5)
            if not self.world.frozen:
                self.world.job_dirs.discard((self.node.hostname, job_id))
                self.world.outputs.pop(job_id, None)
                self.world.checkpoint_files.pop(job_id, None)

    async def find_orphans(self, job_prefix: str) -> NodeOrphans:
        holders: dict[str, list[int]] = {}
        for p in self.world.partitions.values():
            if p.node == self.node.hostname and p.job_id.startswith(job_prefix):
                holders.setdefault(p.job_id, []).append(hash(p.partition_id) % 100000)
        dirs = [j for n, j in self.world.job_dirs if n == self.node.hostname and j.startswith(job_prefix)]
        return NodeOrphans(holders, dirs)

    async def reap_stale_locks(self) -> int:
        return 0

    async def kill_holder(self, pid: int) -> bool:
        if self.world.frozen:  # a killed supervisor stops nothing
            return False
        for pid_key, p in list(self.world.partitions.items()):
            if hash(p.partition_id) % 100000 == pid and p.node == self.node.hostname:
                self.world.partitions.pop(pid_key)
        return True

    async def remove_job_dir(self, job_id: str) -> None:
        self.world.job_dirs.discard((self.node.hostname, job_id))

    async def is_alive(self) -> bool:
        await trio.sleep(0)
        return self.node.hostname not in self.world.unreachable


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


__all__ = ["FakeWorld", "fake_node"]


class FakeInstanceChannel:
    """A FAKE channel to a class instance (see the module's docstring): calls run one at a time, in order."""

    def __init__(self, world: FakeWorld, label: str, container: FakeContainer, job_id: str) -> None:
        self.world, self.label, self.container, self.job_id = world, label, container, job_id
        self._calls_send, self._calls = trio.open_memory_channel[dict](math.inf)
        self._replies_send, self._replies = trio.open_memory_channel[bytes](math.inf)
        self.scope = trio.CancelScope()

    def _broken(self) -> bool:
        return self.container.state != "running" or self.label in self.world.unreachable

    async def send(self, frames: list[bytes]) -> None:
        await trio.sleep(0)
        if self._broken():
            raise InstanceChannelLost(f"{self.label}: the instance is gone")
        for frame in frames:
            self._calls_send.send_nowait(msgpack.unpackb(frame, raw=False))

    async def receive(self) -> bytes:
        while not self._broken():
            with trio.move_on_after(DELAY):
                return await self._replies.receive()
        raise InstanceChannelLost(f"{self.label}: the instance closed its socket")

    async def run(self) -> None:
        with self.scope:
            await self._serve()

    async def _serve(self) -> None:
        async for call in self._calls:
            method = call["method"]
            await trio.sleep(1.0 if method == "slow" else DELAY / 10)
            if method == "crash":
                self.container.killed.set()
                return
            if self._broken():
                return
            self.world.instance_calls.setdefault(self.job_id, []).append(method)
            envelope = msgpack.packb({"format": 1, "ok": method != "fail", "value": call["args"]}, use_bin_type=True)
            self._replies_send.send_nowait(msgpack.packb({"id": call["id"], "envelope": envelope}, use_bin_type=True))
