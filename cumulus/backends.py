"""The two doors from the actors to the outside world, and their real implementations.

* :class:`NodeBackend` - one worker host (over SSH in production): partition leases, job files, orphans.
* :class:`SwarmBackend` - the Swarm manager (Docker API): services, task states, logs, nodes, jobs' secret env.

Actors decide; backends do. The real ones here only adapt :mod:`cumulus.resources`. Unit tests of actor logic
use in-memory fakes with the same methods (``tests/fakes/``).
"""

from __future__ import annotations

import posixpath
import shlex
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Protocol

import trio

from cumulus.config import Settings
from cumulus.resources import files, image_pull, job_network, partition, swarm, swarm_secrets, user_image, warm
from cumulus.resources.checkpoint_store import open_local_checkpoints
from cumulus.resources.instance_channel import SOCKET_NAME, open_instance_channel
from cumulus.resources.ssh import SshConnection, open_ssh_connection
from cumulus.resources.swarm import NodeInfo, ServiceRequest, SwarmClient, TaskState
from cumulus.resources.swarm_client import SwarmJoinInfo


RUNNING_LOCK = ".running"  # worker_image/image/runner_warm.py: locked by the runner while the job runs
LEASES_DIR = ".leases"  # <jobs_dir>/.leases/<job id>/{renew,expired}: a lease lives apart from its job dir


@dataclass(frozen=True)
class NodeOrphans:
    """What a worker holds for job ids of this supervisor: holder pids by job id, and job directories."""

    holders: dict[str, list[int]]
    job_dirs: list[str]


class NodeBackend(Protocol):
    label: str
    job_user: str  # uid:gid job containers run as (learned when the connection opened)
    isolation_problem: str  # why the worker may not run jobs ("" = it passed its isolation check)

    def open_partition(self, *, device: int, fraction: float, duration: float, job_id: str,
                       replace_earlier: bool = False, from_warm: str | None = None) -> AbstractAsyncContextManager[Any]: ...
    def adopt_partition(self, *, job_id: str, partition_id: str, device: int,
                        fraction: float) -> AbstractAsyncContextManager[Any]: ...
    def open_job_files(self, *, job_id: str, package: bytes, restore: bytes | None = None,
                       from_warm: str | None = None) -> AbstractAsyncContextManager[Any]: ...
    def open_warm_dirs(self, warm_id: str, *, claimed: bool = False) -> AbstractAsyncContextManager[Any]: ...
    async def start_warm_job(self, job_id: str, message: bytes, timeout: float = ...) -> None: ...
    def open_instance_channel(self, output_dir: str, *, max_frame: int, socket: str = SOCKET_NAME
                              ) -> AbstractAsyncContextManager[Any]: ...
    def adopt_job_files(self, *, job_id: str) -> AbstractAsyncContextManager[Any]: ...
    def lease_dir(self, job_id: str) -> str | None: ...
    async def renew_leases(self) -> int: ...
    def fail_leases(self, reason: str) -> None: ...
    async def stop_job(self, job_id: str) -> bool: ...
    async def find_orphans(self, job_prefix: str) -> NodeOrphans: ...
    async def kill_holder(self, pid: int) -> bool: ...
    async def reap_stale_locks(self) -> int: ...
    async def remove_job_dir(self, job_id: str) -> None: ...
    async def is_alive(self) -> bool: ...


class SwarmBackend(Protocol):
    def open_service(self, request: ServiceRequest) -> AbstractAsyncContextManager[Any]: ...
    def adopt_service(self, service_id: str, job_id: str) -> AbstractAsyncContextManager[Any]: ...
    def claim_service(self, service_id: str, name: str, task_key: str) -> AbstractAsyncContextManager[Any]: ...
    def follow_logs(self, service_id: str) -> AbstractAsyncContextManager[AsyncIterator[tuple[str, str]]]: ...
    async def task_states(self, labels: dict[str, str]) -> list[TaskState]: ...
    async def list_nodes(self) -> list[NodeInfo]: ...
    async def join_info(self) -> SwarmJoinInfo: ...
    async def update_node(self, node_id: str, *, labels_add: dict[str, str] | None = None,
                          labels_remove: tuple[str, ...] = (), availability: str | None = None) -> NodeInfo: ...
    async def remove_node(self, node_id: str) -> bool: ...
    async def list_services(self, labels: dict[str, str]) -> list[Any]: ...
    async def remove_service(self, service_id: str) -> bool: ...
    def open_secret_env(self, job_id: str, attempt: int,
                        values: dict[str, str]) -> AbstractAsyncContextManager[Any]: ...
    def adopt_secret_env(self, job_id: str) -> AbstractAsyncContextManager[Any]: ...
    async def list_secrets(self, labels: dict[str, str]) -> list[Any]: ...
    async def remove_secret(self, secret_id: str) -> bool: ...
    def save_image(self, image_id: str) -> AbstractContextManager[Iterator[bytes]]: ...
    async def pull_image(self, node_id: str, reference: str, *, timeout: float,
                         command: tuple[str, ...] = ..., mounts: tuple[Any, ...] = ()) -> None: ...
    async def resolve_image(self, reference: str) -> str: ...


class SshNodeBackend:
    """A worker host reached over one SSH connection (owned by its WorkerActor).

    With leases on (``lease.ttl`` > 0), partition holders run detached from the SSH session and keep their
    partition only while :meth:`renew_leases` is called more often than the TTL; a holder found gone (or its
    lease expired) sets its lease's ``lost`` event.
    """

    def __init__(self, conn: SshConnection, settings: Settings) -> None:
        self.conn = conn
        self.label = conn.label
        self._settings = settings
        self.job_user = ""
        self.isolation_problem = ""
        self._leases: dict[str, Any] = {}  # job id -> PartitionLease held through this backend

    def lease_dir(self, job_id: str) -> str | None:
        if not self._settings.lease.ttl:
            return None
        return posixpath.join(self._settings.cluster.jobs_dir, LEASES_DIR, files.check_job_id(job_id))

    @asynccontextmanager
    async def open_partition(self, *, device: int, fraction: float, duration: float, job_id: str,
                             replace_earlier: bool = False, from_warm: str | None = None):
        """The job's partition (a detached, leased holder when leases are on). ``replace_earlier``: an earlier
        attempt of the job may have left a holder here (a supervisor restart, a lost node); stop it first.
        ``from_warm``: the lease directory is that warm service's, renamed (its container watches it already)."""
        lease_dir = self.lease_dir(job_id)
        timeout = self._settings.jobs.release_timeout / 3
        if lease_dir is None:
            async with partition.open_partition_lease(
                self.conn, device=device, fraction=fraction, duration=duration, job_id=job_id,
                holder=self._settings.cluster.holder, release_timeout=timeout,
            ) as lease:
                yield lease
            return
        if replace_earlier:
            await partition.stop_holders_of(self.conn, self._settings.cluster.holder, job_id, lease_dir, timeout)
        try:
            # A fresh lease dir: an earlier attempt's ``expired`` mark must not stop this one.
            quoted = shlex.quote(lease_dir)
            await self.conn.run_to_completion(
                f"find {quoted} -mindepth 1 -delete" if from_warm == job_id  # made early, already mounted
                else warm.take_over_command(posixpath.dirname(lease_dir), from_warm, lease_dir) if from_warm
                else f"rm -rf {quoted} && mkdir -p {quoted}")
            async with partition.open_detached_partition_lease(
                self.conn, device=device, fraction=fraction, duration=duration, job_id=job_id,
                lease_dir=lease_dir, ttl=self._settings.lease.ttl, holder=self._settings.cluster.holder,
                release_timeout=timeout,
            ) as lease:
                async with self._registered(job_id, lease):
                    yield lease
        finally:
            with trio.move_on_after(timeout, shield=True):
                await self.conn.run(f"rm -rf {shlex.quote(lease_dir)}", check=False)

    @asynccontextmanager
    async def adopt_partition(self, *, job_id: str, partition_id: str, device: int, fraction: float):
        """Take over the running holder of ``job_id`` (after a supervisor restart); PartitionError if gone."""
        holders = [h for h in await partition.find_holders(self.conn, holder=self._settings.cluster.holder)
                   if h.job_id == job_id]
        lease_dir = self.lease_dir(job_id)
        if not holders:
            if lease_dir:  # what the expired lease left: nobody else will remove it
                await self.conn.run(f"rm -rf {shlex.quote(lease_dir)}", check=False)
            raise partition.PartitionError(f"the partition holder of {job_id} on {self.label} is gone")
        try:
            async with partition.adopt_partition_lease(
                self.conn, job_id=job_id, pid=holders[0].pid, partition_id=partition_id, device=device,
                fraction=fraction,
            ) as lease:
                async with self._registered(job_id, lease):
                    yield lease
        finally:
            if lease_dir:
                with trio.move_on_after(10, shield=True):
                    await self.conn.run(f"rm -rf {shlex.quote(lease_dir)}", check=False)

    @asynccontextmanager
    async def _registered(self, job_id: str, lease: Any):
        self._leases[job_id] = lease
        try:
            yield
        finally:
            self._leases.pop(job_id, None)

    def fail_leases(self, reason: str) -> None:
        """The connection is gone: no lease held through it can be renewed, so each is lost (its job stops), with
        cause ``LeaseLoss.NODE_UNREACHABLE``."""
        for lease in self._leases.values():
            lease.mark_lost(partition.LeaseLoss.NODE_UNREACHABLE, reason)

    async def renew_leases(self) -> int:
        """Renew every lease held through this backend (one SSH command); mark the ones whose holder is gone.
        Returns how many were renewed."""
        leases = dict(self._leases)
        if not leases:
            return 0
        gone = await partition.renew_leases(
            self.conn, {job: (self.lease_dir(job) or "", lease.holder_pid) for job, lease in leases.items()})
        for job in gone:
            leases[job].mark_lost(partition.LeaseLoss.HOLDER_GONE, "holder gone or lease expired")
        return len(leases) - len(gone)

    async def stop_job(self, job_id: str) -> bool:
        """Mark the job's lease stopped: the runner in its container kills the job within a fraction of a second
        (no Docker access needed on the worker); then wait, on the node, until no process of the job holds its
        running lock (``output/.running``, :mod:`worker_image/image/runner_warm`) any more. Returns whether that
        was seen (False: no lease, no lock yet, or not within 5 s: the caller asks the Swarm instead)."""
        lease_dir = self.lease_dir(job_id)
        if not lease_dir:
            return False
        q = shlex.quote
        lock = posixpath.join(self._settings.cluster.jobs_dir, files.check_job_id(job_id), "output", RUNNING_LOCK)
        result = await self.conn.run(
            f"[ -d {q(lease_dir)} ] && echo stopped by the supervisor > {q(posixpath.join(lease_dir, 'expired'))}"
            f" && [ -e {q(lock)} ] && timeout 5 flock {q(lock)} true && echo stopped", check=False, timeout=10)
        return result.stdout.strip() == "stopped"

    def open_job_files(self, *, job_id: str, package: bytes, restore: bytes | None = None,
                       from_warm: str | None = None):
        return files.open_job_files(self.conn, jobs_dir=self._settings.cluster.jobs_dir, job_id=job_id,
                                    package=package, restore=restore, from_warm=from_warm)

    def open_warm_dirs(self, warm_id: str, *, claimed: bool = False):
        return warm.open_warm_dirs(self.conn, jobs_dir=self._settings.cluster.jobs_dir, warm_id=warm_id,
                                   lease_dir=self.lease_dir(warm_id), claimed=claimed)

    async def start_warm_job(self, job_id: str, message: bytes, timeout: float = warm.START_TIMEOUT) -> None:
        await warm.start_warm_job(self.conn, posixpath.join(self._settings.cluster.jobs_dir, job_id), message, timeout)

    def open_instance_channel(self, output_dir: str, *, max_frame: int, socket: str = SOCKET_NAME):  # to a socket
        return open_instance_channel(self.conn.asyncssh_connection, posixpath.join(output_dir, socket),  # of its job
                                     label=self.label, max_frame=max_frame)

    def adopt_job_files(self, *, job_id: str):
        return files.adopt_job_files(self.conn, jobs_dir=self._settings.cluster.jobs_dir, job_id=job_id)

    async def find_orphans(self, job_prefix: str) -> NodeOrphans:
        holders: dict[str, list[int]] = {}
        for info in await partition.find_holders(self.conn, holder=self._settings.cluster.holder):
            if info.job_id and info.job_id.startswith(job_prefix):
                holders.setdefault(info.job_id, []).append(info.pid)
        dirs = await files.list_job_dirs(self.conn, self._settings.cluster.jobs_dir)
        if self._settings.lease.ttl:  # lease dirs whose job dir is already gone (a crash between the two)
            leases = posixpath.join(self._settings.cluster.jobs_dir, LEASES_DIR)
            listing = await self.conn.run(f"ls -1 {shlex.quote(leases)} 2>/dev/null", check=False)
            dirs += [name for name in listing.stdout.split() if name not in dirs]
        return NodeOrphans(holders, [d for d in dirs if d.startswith(job_prefix)])

    async def kill_holder(self, pid: int) -> bool:
        return await partition.kill_holder(self.conn, pid)

    async def reap_stale_locks(self) -> int:
        """Remove Chronos lock files whose creating process is gone (a holder killed with SIGKILL cannot remove
        its own); Chronos names them partition_<pid>_... . Returns how many were removed."""
        script = (
            f'n=0; for f in {partition.CHRONOS_LOCK_DIR}/partition_*.lock; do [ -e "$f" ] || continue; '
            'p=${f##*/partition_}; p=${p%%_*}; '
            'if ! kill -0 "$p" 2>/dev/null && [ ! -d "/proc/$p" ]; then rm -f "$f" && n=$((n+1)); fi; '
            'done; echo $n'
        )
        result = await self.conn.run(script, check=False)
        return int(result.stdout.strip()) if result.stdout.strip().isdigit() else 0

    async def remove_job_dir(self, job_id: str) -> None:
        """Remove the job's directory and its lease directory (either may already be gone)."""
        lease_dir = self.lease_dir(job_id)
        try:
            await files.remove_job_dir(self.conn, self._settings.cluster.jobs_dir, job_id)
        finally:
            if lease_dir:
                await self.conn.run(f"rm -rf {shlex.quote(lease_dir)}", check=False)

    async def is_alive(self) -> bool:
        return await self.conn.is_alive(timeout=5)


@asynccontextmanager
async def connect_ssh_node(node: NodeInfo, settings: Settings) -> AsyncIterator[SshNodeBackend]:
    """Open the SSH connection to ``node`` (address from its ``cumulus.ssh`` label) and yield its backend."""
    address = node.labels.get("cumulus.ssh", "")
    host, _, port = address.rpartition(":")
    if not host:
        raise ValueError(f"node {node.hostname} has no cumulus.ssh label (HOST:PORT); was it set up with "
                         "setup-worker.sh?")
    user = node.labels.get("cumulus.ssh_user") or settings.cluster.ssh_user
    pinned = node.labels.get("cumulus.host_key", "")  # a joined worker: exactly the key it joined with
    async with open_ssh_connection(
        host, int(port), user=user, key_path=settings.cluster.ssh_key,
        known_hosts_path=settings.cluster.known_hosts, pinned_host_keys=(pinned,) if pinned else (),
        connect_timeout=settings.cluster.ssh_connect_timeout,
    ) as conn:
        backend = SshNodeBackend(conn, settings)
        probe = await job_network.probe_worker(conn, settings.containers.user)  # once per connection
        backend.job_user, backend.isolation_problem = probe.job_user, probe.problem
        yield backend


class DockerSwarmBackend:
    """The Swarm manager's Docker API."""

    def __init__(self, client: SwarmClient, settings: Settings) -> None:
        self.client = client
        self._settings = settings
        self._job_network_lock = trio.Lock()
        self._job_network_ready = False
        self.prepared = user_image.PreparedOnNodes()  # user images pulled and runner volumes filled, per node

    @asynccontextmanager
    async def open_service(self, request: ServiceRequest):
        if request.network == "internet" and not self._job_network_ready:
            async with self._job_network_lock:  # made once, on first use, by one job
                if not self._job_network_ready:
                    await job_network.ensure_swarm_job_network(self.client)
                    self._job_network_ready = True
        async with swarm.open_service(self.client, request,
                                      remove_timeout=self._settings.jobs.release_timeout) as service:
            yield service

    def adopt_service(self, service_id: str, job_id: str):
        return swarm.adopt_service(self.client, service_id, job_id,
                                   remove_timeout=self._settings.jobs.release_timeout)

    def claim_service(self, service_id: str, name: str, task_key: str):
        return swarm.claim_service(self.client, service_id, name, task_key,
                                   remove_timeout=self._settings.jobs.release_timeout)

    def follow_logs(self, service_id: str):
        return swarm.follow_logs(self.client, service_id)

    async def task_states(self, labels: dict[str, str]) -> list[TaskState]:
        return await self.client.task_states(labels)

    async def list_nodes(self) -> list[NodeInfo]:
        return await self.client.list_nodes()

    async def join_info(self) -> SwarmJoinInfo:
        return await self.client.join_info()

    async def update_node(self, node_id: str, *, labels_add: dict[str, str] | None = None,
                          labels_remove: tuple[str, ...] = (), availability: str | None = None) -> NodeInfo:
        return await self.client.update_node(node_id, labels_add=labels_add, labels_remove=labels_remove,
                                             availability=availability)

    async def remove_node(self, node_id: str) -> bool:
        return await self.client.remove_node(node_id)

    async def list_services(self, labels: dict[str, str]) -> list[Any]:
        return await self.client.list_services(labels)

    async def remove_service(self, service_id: str) -> bool:
        return await self.client.remove_service(service_id)

    def open_secret_env(self, job_id: str, attempt: int, values: dict[str, str]):
        """The job's secret env as a Swarm secret (:func:`cumulus.resources.swarm_secrets.open_secret_env`)."""
        return swarm_secrets.open_secret_env(self.client, job_id=job_id, supervisor_id=self._settings.supervisor_id,
                                             attempt=attempt, values=values,
                                             remove_timeout=self._settings.jobs.release_timeout)

    def adopt_secret_env(self, job_id: str):
        return swarm_secrets.adopt_secret_env(self.client, job_id=job_id,
                                              remove_timeout=self._settings.jobs.release_timeout)

    async def list_secrets(self, labels: dict[str, str]) -> list[Any]:
        return await swarm_secrets.list_secrets(self.client, labels)

    async def remove_secret(self, secret_id: str) -> bool:
        return await swarm_secrets.remove_secret(self.client, secret_id)

    def save_image(self, image_id: str) -> AbstractContextManager[Iterator[bytes]]:
        """The ``docker save`` stream of ``image_id`` from the manager (blocking: for a worker thread)."""
        return self.client.save_image(image_id)

    async def pull_image(self, node_id: str, reference: str, *, timeout: float,
                         command: tuple[str, ...] = image_pull.PULL_COMMAND, mounts: tuple[Any, ...] = ()) -> None:
        """Make ``node_id``'s dockerd pull ``reference`` (a one-shot pull service) and run ``command`` in it with
        ``mounts``; ImagePullFailed says why not."""
        pull = image_pull.new_pull_service(node_id, reference, self._settings.supervisor_id, command=command,
                                           mounts=mounts)
        await image_pull.pull_on_node(self.client, pull, timeout=timeout,
                                      remove_timeout=self._settings.jobs.release_timeout)

    async def resolve_image(self, reference: str) -> str:
        """``reference`` pinned to its digest (``REGISTRY/NAME@sha256:...``), as the manager's engine finds it in
        its registry (with the engine's own registry trust and credentials). ImagePullFailed says why not."""
        return await user_image.resolve_digest(self.client, reference)


@asynccontextmanager
async def open_docker_swarm(settings: Settings) -> AsyncIterator[DockerSwarmBackend]:
    client = SwarmClient(settings.cluster.docker_host)
    try:
        yield DockerSwarmBackend(client, settings)
    finally:
        await client.aclose()


@dataclass(frozen=True)
class Backends:
    """How the supervisor reaches the world: ``open_swarm``, ``connect_node``, ``open_checkpoints`` (the store)."""

    open_swarm: Any = open_docker_swarm
    connect_node: Any = connect_ssh_node
    open_checkpoints: Any = open_local_checkpoints
    needs_asyncio: bool = True  # asyncssh runs on the asyncio bridge


from cumulus.node_connections import NodeConnections, WorkerUnavailable  # noqa: E402  - re-exported
