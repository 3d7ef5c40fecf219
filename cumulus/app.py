"""The Cumulus supervisor process: its supervision tree and the Python API that the RPC layer calls.

    async with open_supervisor(settings) as sup:
        record = await sup.submit(JobSpec(package=..., gpu=0.5))
        async for event in record.events(): ...

Tree (children start top to bottom, each ready before the next, and stop bottom to top)::

    root (one_for_one)
    ├── core (one_for_all: a crash of any part tears all jobs down cleanly and starts afresh)
    │   ├── journal    SQLite (WAL): every job's record; stops last, after every job wrote its end
    │   ├── scheduler  Scheduler: device shares, the queue, placement
    │   ├── workers    dynamic: WorkerActor per Swarm node (SSH connection, health, leases, orphans)
    │   ├── jobs       dynamic, temporary: JobActor per job (reservation > partition > files > service)
    │   ├── watcher    TaskWatcher: one poller of the Swarm task list
    │   └── cluster    ClusterActor: job table, node sync, recovery
    ├── rpc            gRPC server
    └── http           HTTP port: /metrics, /healthz, /readyz, the dashboard (server.http_listen)

Stopping the tree stops the HTTP port and the RPC server first, then the cluster, then every job (each tearing
down what it owns, while the workers' SSH connections and the scheduler are still there), then the workers, the
scheduler, and the journal last.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AsyncIterator

import trio

from cumulus import journal_lock, metrics
from cumulus.actors.base import ActorRef
from cumulus.actors.ownership import observed_by
from cumulus.actors.cluster import ClusterActor
from cumulus.actors.cluster_messages import CancelJob, DescribeJob, GetJob, ListJobs, PauseJob, ResumeJob, Submit
from cumulus.actors.drain import ActivateWorker, DrainStatus, DrainWorker, RemoveIfDrained
from cumulus.actors.image_gate import WorkerImages, open_image_store
from cumulus.actors.scheduler import ListWorkers, Scheduler
from cumulus.actors.join_tokens import (CompleteJoin, CreateJoinToken, JoinedNode, JoinGrant, JoinOffer,
                                        JoinTokenRegistry, ListJoinTokens, RegisterWorker, RevokeJoinToken)
from cumulus.actors.tokens import CreateToken, Credentials, ListTokens, RevokeToken, RotateToken, TokenRegistry
from cumulus.actors.watcher import TaskWatcher
from cumulus.asyncio_bridge import open_asyncio_bridge
from cumulus.backends import Backends, NodeConnections
from cumulus.config import Settings, apply_cluster_description
from cumulus.errors import InvalidRequest, PermissionDenied, SupervisorUnavailable
from cumulus.history import HistoryEvent
from cumulus.instance_api import InstanceCallsApi
from cumulus.identity import LOCAL_ADMIN, Caller, Limits, TokenInfo
from cumulus.index_credentials import (DeleteCredentials, IndexCredentialsInfo, ListCredentials, StoreCredentials,
                                       check_allowed, check_credential, normalised_url)
from cumulus.devices import WorkerInfo
from cumulus.jobs import JobRecord, JobSpec, JobState
from cumulus.join_table import JoinTokenInfo
from cumulus.journal import Flush, Journal
from cumulus.journal_rows import SecretBox
from cumulus.resources.checkpoint_store import CheckpointStore
from cumulus.resources.image_store import ImageStore
from cumulus.supervisor import ChildSpec, DynamicSupervisor, Restart, Strategy, Supervisor
from cumulus.usage import GROUPS, SummarizeUsage, UsageReport

log = logging.getLogger(__name__)

REMOVE_POLL_SECONDS = 1.0  # how often a removal looks whether the worker's jobs have ended


@dataclass(frozen=True)
class Health:
    serving: bool
    reason: str = ""
    supervisor_id: str = ""
    workers_ready: int = 0
    jobs_active: int = 0


class SupervisorApi(InstanceCallsApi):
    """What clients can ask of a running supervisor. Every method is a Trio coroutine.

    Errors: :class:`~cumulus.errors.RequestRejected` subclasses for bad or unsatisfiable requests,
    :class:`~cumulus.errors.SupervisorUnavailable` while the tree is (re)starting or stopping.

    Users: every job method takes the ``caller`` (:class:`~cumulus.identity.Caller`, resolved from the RPC's token;
    :data:`~cumulus.identity.LOCAL_ADMIN`, who sees every job and has no limits, when omitted). A job belongs to
    the caller who submitted it; another user's job is :class:`~cumulus.errors.NotFound`, with the same message as
    an unknown id, for every method (admins see all). See :class:`~cumulus.actors.cluster.ClusterActor`. Method
    calls on class instances: :class:`~cumulus.instance_api.InstanceCallsApi`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root: Supervisor | None = None
        self.listen_address: str | None = None
        self.http_address: str | None = None  # http(s)://HOST:PORT of the HTTP port, when it serves
        self.metrics = metrics.OFF  # the supervisor's own, from open_supervisor
        self.credentials = Credentials()  # written by the tokens actor only; read by the RPC layer
        self.checkpoints: CheckpointStore | None = None  # the jobs' checkpoints (a directory next to the journal)
        self.image_store: ImageStore | None = None  # the worker image exports the HTTP port's registry serves

    def _core(self, name: str) -> ActorRef:
        core = self.root.whereis("core") if self.root is not None else None
        actor = core.whereis(name) if core is not None else None
        if actor is None:
            raise SupervisorUnavailable("the supervisor is starting or stopping; try again shortly")
        return actor

    def _cluster(self) -> ActorRef:
        return self._core("cluster")

    async def submit(self, spec: JobSpec, *, caller: Caller = LOCAL_ADMIN) -> JobRecord:
        """Start a job owned by ``caller`` (``spec.owner`` becomes the caller's name), or return the caller's job
        of the same idempotency key when the request is the same.

        Raises :class:`~cumulus.errors.AlreadyExists` when the caller used that key for a different request, and
        :class:`~cumulus.errors.QuotaExceeded` when the job is over one of the caller's limits (the message names
        the limit, the use, and when to retry). Returns once the job is in the journal (a submission that returned
        survives a crash of the supervisor), and not later: its placement goes on meanwhile."""
        record = await self._cluster().call(Submit(replace(spec, owner=caller.name), caller))
        # The job's row was queued to the journal before the cluster answered: this commits it, with whatever
        # else waits (concurrent submissions share the transaction).
        await self._core("journal").call(Flush())
        return record

    async def get(self, job_id: str, *, caller: Caller = LOCAL_ADMIN) -> JobRecord:
        """The job's record (for its status, events, logs and result); NotFound if the caller may not see it."""
        return await self._cluster().call(GetJob(job_id, caller))

    async def describe(self, job_id: str, *, caller: Caller = LOCAL_ADMIN) -> tuple[JobRecord, list[HistoryEvent]]:
        """The job's record and its history from the journal, oldest first."""
        return await self._cluster().call(DescribeJob(job_id, caller))

    async def cancel(self, job_id: str, *, caller: Caller = LOCAL_ADMIN,
                     until_stopped: bool = False) -> tuple[JobRecord, bool]:
        """Cancel a job and wait until its teardown finished (its terminal state and teardown report are set);
        returns the record and whether it was still live. ``until_stopped``: return as soon as its container is
        stopped and its partition released (``record.halted``), while the removal of its service goes on."""
        record, was_live = await self._cluster().call(CancelJob(job_id, caller))
        await (record.halted if until_stopped else record.torn_down).wait()
        return record, was_live

    async def pause(self, job_id: str, *, grace: float = 0.0, caller: Caller = LOCAL_ADMIN,
                    wait: bool = True) -> tuple[JobRecord, bool]:
        """Ask a job to pause and (``wait``) wait until it is PAUSED, or has ended meanwhile (it finished before it
        paused); returns the record and whether its container was running. ``grace``: 0 = ``jobs.pause_grace``."""
        record, was_running = await self._cluster().call(PauseJob(job_id, grace, caller))
        if not wait:
            return record, was_running
        async for _ in record.events(replay_logs=False):
            if record.state is JobState.PAUSED or record.state.terminal:
                break
        return record, was_running

    async def resume(self, job_id: str, *, caller: Caller = LOCAL_ADMIN) -> JobRecord:
        """Queue a PAUSED job again; returns its record."""
        return await self._cluster().call(ResumeJob(job_id, caller))

    async def list_jobs(self, include_finished: bool = True, *, caller: Caller = LOCAL_ADMIN) -> list[JobRecord]:
        """The caller's jobs (every job for an admin)."""
        return await self._cluster().call(ListJobs(include_finished, caller))

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._core("scheduler").call(ListWorkers())

    async def drain_worker(self, name: str, timeout: int = 0) -> DrainStatus:
        """No new job goes to worker ``name`` (hostname, node id or unique id prefix); jobs still running there
        ``timeout`` seconds from now are cancelled (0: never). Returns at once (:mod:`cumulus.actors.drain`)."""
        return await self._cluster().call(DrainWorker(name, timeout))

    async def activate_worker(self, name: str) -> DrainStatus:
        """Undo a drain: the worker takes new jobs again."""
        return await self._cluster().call(ActivateWorker(name))

    async def remove_worker(self, name: str, timeout: int = 0) -> DrainStatus:
        """Drain the worker, wait until no job runs there (those left after ``timeout`` seconds are cancelled; 0:
        wait however long they take), then take it out of the Swarm. Returns once it is gone."""
        status = await self._cluster().call(DrainWorker(name, timeout, for_removal=True))
        while not status.removed:
            status = await self._cluster().call(RemoveIfDrained(status.node_id))
            if not status.removed:
                await trio.sleep(REMOVE_POLL_SECONDS)
        return status

    async def usage(self, since: float | None = None, by: str = "user", *, caller: Caller = LOCAL_ADMIN
                    ) -> UsageReport:
        """Device usage of the attempts that ended at or after ``since`` (all the journal keeps if None), grouped
        ``by`` user, job or worker (:mod:`cumulus.usage`), priced with ``usage.prices``: every user's for an admin,
        the caller's own jobs' otherwise. InvalidRequest for an unknown ``by``."""
        if by not in GROUPS:  # checked here: the journal must never crash on a request
            raise InvalidRequest(f"cannot group usage by {by!r}: use one of {', '.join(GROUPS)}")
        prices = tuple(sorted(self.settings.usage.prices.items()))
        query = SummarizeUsage(by, since, None if caller.admin else caller.name, prices, self.settings.usage.currency)
        return await self._core("journal").call(query)

    def _tokens(self) -> ActorRef:
        tokens = self.root.whereis("tokens") if self.root is not None else None
        if tokens is None:
            raise SupervisorUnavailable("the supervisor is starting or stopping; try again shortly")
        return tokens

    async def create_token(self, name: str, *, admin: bool = False, limits: Limits = Limits()
                           ) -> tuple[TokenInfo, str]:
        """Make a token; returns its info and its secret (shown once, never stored)."""
        return await self._tokens().call(CreateToken(name, admin, limits))

    async def list_tokens(self) -> list[TokenInfo]:
        return await self._tokens().call(ListTokens())

    async def revoke_token(self, name: str) -> TokenInfo:
        return await self._tokens().call(RevokeToken(name))

    async def rotate_token(self, name: str) -> tuple[TokenInfo, str]:
        """A new secret for the token ``name`` (same user, admin flag and limits); the old one stops working."""
        return await self._tokens().call(RotateToken(name))

    async def store_index_credentials(self, index_url: str, username: str, password: str, *,
                                      caller: Caller = LOCAL_ADMIN) -> tuple[IndexCredentialsInfo, bool]:
        """Store (or replace) the caller's credentials for an allowed package index (``jobs.package_indexes``;
        Unsatisfiable otherwise), sealed in the journal (:mod:`cumulus.index_credentials`). Returns their info and
        whether they replaced earlier ones."""
        url = check_allowed(index_url, self.settings.jobs.package_indexes)
        credential = check_credential(username, password)
        return await self._core("journal").call(StoreCredentials(caller.name, url, credential))

    async def list_index_credentials(self, *, all_users: bool = False, caller: Caller = LOCAL_ADMIN
                                     ) -> list[IndexCredentialsInfo]:
        """The caller's stored index credentials (everyone's for ``all_users``: admins only), never the secrets."""
        if all_users and not caller.admin:
            raise PermissionDenied(f"token {caller.name!r} is not an admin token; listing every user's index "
                                   f"credentials needs one (without --all: your own)")
        return await self._core("journal").call(ListCredentials(None if all_users else caller.name))

    async def delete_index_credentials(self, index_url: str, *, caller: Caller = LOCAL_ADMIN) -> IndexCredentialsInfo:
        """Forget the caller's credentials for ``index_url`` (allowed or not any more); NotFound when none."""
        return await self._core("journal").call(DeleteCredentials(caller.name, normalised_url(index_url)))

    def _join_tokens(self) -> ActorRef:
        registry = self.root.whereis("join_tokens") if self.root is not None else None
        if registry is None:
            raise SupervisorUnavailable("the supervisor is starting or stopping; try again shortly")
        return registry

    async def create_join_token(self, ttl: float = 0, labels: dict[str, str] | None = None, *,
                                created_by: str = "") -> JoinOffer:
        """A join token for one host and the line to run on it (:mod:`cumulus.actors.join_tokens`)."""
        return await self._join_tokens().call(CreateJoinToken(ttl, dict(labels or {}), created_by))

    async def list_join_tokens(self) -> list[JoinTokenInfo]:
        return await self._join_tokens().call(ListJoinTokens())

    async def revoke_join_token(self, token_id: str) -> JoinTokenInfo:
        return await self._join_tokens().call(RevokeJoinToken(token_id))

    async def register_worker(self, token: str, hostname: str, ssh_address: str, host_key: str) -> JoinGrant:
        """A joining host, authenticated by its join token, registers; the answer is what it needs to join."""
        return await self._join_tokens().call(RegisterWorker(token, hostname, ssh_address, host_key))

    async def complete_join(self, token: str, node_id: str, worker_json: str) -> JoinedNode:
        return await self._join_tokens().call(CompleteJoin(token, node_id, worker_json))

    async def health(self) -> Health:
        try:
            workers = await self.list_workers()
            jobs = await self.list_jobs(include_finished=False)
        except SupervisorUnavailable as error:
            return Health(False, str(error), self.settings.supervisor_id)
        ready = sum(w.healthy for w in workers)
        return Health(True, "", self.settings.supervisor_id, ready, len(jobs))


def journal_secrets(settings: Settings) -> SecretBox:
    """The key that seals secret env values in the journal: ``security.secret_key_file``, else ``journal.key``
    next to the journal (made on first use, 0600); an in-memory journal gets a key that dies with it."""
    if settings.journal.path == ":memory:":
        return SecretBox.ephemeral()
    path = settings.security.secret_key_file or str(Path(settings.journal.path).expanduser().with_suffix(".key"))
    return SecretBox.from_key_file(path)


def build_tree(api: SupervisorApi, backends: Backends, swarm: object, *, serve_rpc: bool = True) -> Supervisor:
    settings = api.settings
    core_holder: dict[str, Supervisor] = {}

    def core() -> Supervisor:
        # Children of both are temporary: the next node sync starts a crashed worker's actor again (the node is
        # still there), and a job's end is recorded instead of restarting it. No restart intensity applies.
        workers = DynamicSupervisor(name="workers")
        jobs = DynamicSupervisor(name="jobs")
        connections = NodeConnections()

        def cluster() -> ClusterActor:
            core = core_holder["core"]
            return ClusterActor(settings, backends, swarm, connections=connections, workers=workers, jobs=jobs,
                                scheduler=core.whereis("scheduler"), watcher=core.whereis("watcher"),
                                journal=core.whereis("journal"),
                                images=WorkerImages(settings, swarm, api.image_store), checkpoints=api.checkpoints)

        tree = Supervisor(
            [
                ChildSpec.actor("journal", lambda: Journal(settings.journal.path, settings.jobs.result_retention,
                                                             journal_secrets(settings))),
                ChildSpec.actor("scheduler", lambda: Scheduler(settings)),
                ChildSpec.supervisor("workers", lambda: workers),
                ChildSpec.supervisor("jobs", lambda: jobs),
                ChildSpec.actor("watcher", lambda: TaskWatcher(swarm, settings.supervisor_id,
                                                               settings.cluster.poll_interval)),
                ChildSpec.actor("cluster", cluster),
            ],
            name="core", strategy=Strategy.ONE_FOR_ALL, max_restarts=3, max_seconds=30,
        )
        core_holder["core"] = tree
        return tree

    children = [
        ChildSpec.actor("tokens", lambda: TokenRegistry(settings.journal.path, api.credentials,
                                                        settings.security.admin_token_file)),
        ChildSpec.actor("join_tokens", lambda: JoinTokenRegistry(settings, swarm)),
        ChildSpec.supervisor("core", core),
    ]
    if serve_rpc:
        from cumulus.rpc.server import serve_grpc

        async def rpc(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            await serve_grpc(api, settings.grpc.listen, security=settings.security, credentials=api.credentials,
                             max_message_bytes=settings.grpc.max_message_mb << 20,
                             max_concurrent_rpcs=settings.grpc.max_concurrent_rpcs, metrics=api.metrics,
                             task_status=task_status)

        children.append(ChildSpec("rpc", rpc, Restart.PERMANENT))
        if settings.server.http_listen:
            from cumulus.rpc.http import serve_http

            async def http(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
                await serve_http(api, api.metrics, settings.server.http_listen, security=settings.security,
                                 task_status=task_status)

            children.append(ChildSpec("http", http, Restart.PERMANENT))
    return Supervisor(children, name="root", max_restarts=3, max_seconds=10)


@asynccontextmanager
async def _maybe_asyncio(needed: bool, counted: metrics.Metrics) -> AsyncIterator[None]:
    if needed:
        async with open_asyncio_bridge(on_unhandled_error=counted.asyncio_errors.inc):
            yield
    else:
        yield


@asynccontextmanager
async def open_supervisor(
    settings: Settings, *, backends: Backends | None = None, serve_rpc: bool = True
) -> AsyncIterator[SupervisorApi]:
    """Start the whole tree (each child ready before the next) and yield its API; stop it on exit.

    On exit - normal, error or cancellation - children stop in reverse order and release what they own.
    ``backends`` replaces how the world is reached (tests pass in-memory fakes).
    """
    backends = backends or Backends()
    apply_cluster_description(settings)
    api = SupervisorApi(settings)
    api.metrics = metrics.Metrics(enabled=settings.metrics.enabled)
    # The journal's lock first (JournalInUse, naming the pid, while another supervisor uses the journal).
    with journal_lock.holding(settings.journal.path), metrics.bound(api.metrics), observed_by(api.metrics):
        async with _open_tree(api, backends, serve_rpc) as running:
            yield running


@asynccontextmanager
async def _open_tree(api: SupervisorApi, backends: Backends, serve_rpc: bool) -> AsyncIterator[SupervisorApi]:
    settings = api.settings
    async with (_maybe_asyncio(backends.needs_asyncio, api.metrics), backends.open_swarm(settings) as swarm,
                contextlib.AsyncExitStack() as stack):
        api.image_store = await open_image_store(settings)  # None: the worker image gate is off
        api.checkpoints = stack.enter_context(backends.open_checkpoints(settings))
        root = build_tree(api, backends, swarm, serve_rpc=serve_rpc)
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            api.root = root
            api.listen_address = root.whereis("rpc") if serve_rpc else None
            api.http_address = root.whereis("http") if serve_rpc and settings.server.http_listen else None
            try:
                yield api
            finally:
                api.root = None
                nursery.cancel_scope.cancel()
