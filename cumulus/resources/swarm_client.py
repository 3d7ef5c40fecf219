"""The Swarm manager's Docker API as a Trio-facing client (:class:`SwarmClient`, on docker-py), and what it reads
back, flattened into plain records: nodes (:class:`NodeInfo`), tasks (:class:`TaskState`), services
(:class:`ServiceInfo`, and :class:`ServiceHandle` for one Cumulus created or adopted). :class:`SwarmError` is how
every failed call reports.

Every blocking docker-py call runs in a worker thread (``trio.to_thread.run_sync``). Read-only calls are abandoned
on cancellation (their thread finishes in the background, harmlessly); calls that change the Swarm (create,
remove) are not, so that a cancelled caller never leaves a service it does not know about.

Re-exported by :mod:`cumulus.resources.swarm`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import docker
import docker.errors
import requests
import trio

from cumulus import metrics
from cumulus.errors import CumulusError
from cumulus.resources.swarm_spec import LABEL_JOB, ServiceRequest, build_service_spec

T = TypeVar("T")

#: Task states after which the task's container no longer runs.
TERMINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


class SwarmError(CumulusError):
    """A Docker API call failed; the message says which and why."""


@dataclass
class ServiceHandle:
    """A created service. ``removal_confirmed`` becomes ``True`` once :func:`open_service` saw it gone: the
    service removed and no task (so no container) of it left.

    Set ``node_unreachable`` (the owner learnt that the service's node is lost) and the removal no longer waits
    for the task to disappear: a node that cannot be reached cannot report its container gone, and its
    container is stopped on the node itself (expired lease, or dockerd reconciling once it returns)."""

    id: str
    name: str
    job_id: str
    removal_confirmed: bool = False
    node_unreachable: bool = False
    handed_over: bool = False  # its ownership moved on (a warm service a job took): its old owner leaves it be
    confirm_removal: bool = True  # False: its removal does not wait for its container's end (it holds nothing)


@dataclass(frozen=True)
class NodeInfo:
    id: str
    hostname: str
    state: str  # "ready", "down", "unknown", "disconnected"
    availability: str  # "active", "pause", "drain"
    role: str  # "manager", "worker"
    labels: dict[str, str]
    address: str | None

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.availability == "active"


@dataclass(frozen=True)
class SwarmJoinInfo:
    worker_token: str
    manager_addresses: tuple[str, ...]


@dataclass(frozen=True)
class TaskState:
    """One Swarm task, flattened. ``state`` is Swarm's lower-case task state (new, pending, assigned, accepted,
    preparing, starting, running, complete, failed, shutdown, rejected, orphaned, remove)."""

    service_id: str
    job_id: str | None
    task_id: str
    state: str
    desired_state: str
    exit_code: int | None
    error: str | None
    message: str | None
    container_id: str | None
    node_id: str | None
    timestamp: str | None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class ServiceInfo:
    id: str
    name: str
    labels: dict[str, str]
    created_at: str | None


def _task_state(t: dict[str, Any]) -> TaskState:
    status = t.get("Status") or {}
    cstatus = status.get("ContainerStatus") or {}
    labels = ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
    return TaskState(
        service_id=t.get("ServiceID", ""),
        job_id=labels.get(LABEL_JOB),
        task_id=t.get("ID", ""),
        state=str(status.get("State", "")).lower(),
        desired_state=str(t.get("DesiredState", "")).lower(),
        exit_code=cstatus.get("ExitCode") if cstatus.get("ContainerID") else None,
        error=status.get("Err") or None,
        message=status.get("Message") or None,
        container_id=cstatus.get("ContainerID") or None,
        node_id=t.get("NodeID") or None,
        timestamp=status.get("Timestamp"),
    )


def _node_info(n: dict[str, Any]) -> NodeInfo:
    spec, status, desc = n.get("Spec") or {}, n.get("Status") or {}, n.get("Description") or {}
    return NodeInfo(
        id=n["ID"],
        hostname=desc.get("Hostname", ""),
        state=str(status.get("State", "unknown")).lower(),
        availability=str(spec.get("Availability", "")).lower(),
        role=str(spec.get("Role", "")).lower(),
        labels=dict(spec.get("Labels") or {}),
        address=status.get("Addr"),
    )


def _label_filter(labels: dict[str, str] | None) -> list[str]:
    return [f"{k}={v}" if v is not None else k for k, v in (labels or {}).items()]

class SwarmClient:
    """The manager's Docker API, Trio-facing. ``docker_url``: ``unix:///path/docker.sock`` or ``tcp://...``."""

    def __init__(self, docker_url: str, *, timeout: float = 30.0, max_pool_size: int = 32) -> None:
        """Contacts nothing: the engine is first asked (for its API version) by the first call, so a supervisor
        starts, and serves, while its manager is still unreachable."""
        self.docker_url = docker_url
        self._timeout = timeout
        self._max_pool_size = max_pool_size
        self._api: docker.APIClient | None = None
        self._api_lock = threading.Lock()

    @property
    def api(self) -> docker.APIClient:
        """The underlying docker-py client. Blocking (its first use negotiates the API version with the engine,
        and fails if the engine cannot be reached); use only from a thread."""
        with self._api_lock:
            if self._api is None:
                self._api = docker.APIClient(base_url=self.docker_url, version="auto", timeout=self._timeout,
                                             max_pool_size=self._max_pool_size)
            return self._api

    async def _call(self, what: str, fn: str | Callable[..., T], *args: Any, abandon: bool = True, **kw: Any) -> T:
        """``fn``: the name of a docker-py client method, or a function (that uses :attr:`api`); run in a thread.
        Raises :class:`SwarmError` for an engine that is unreachable or says no, ``docker.errors.NotFound`` as
        itself."""

        def run() -> T:
            target = getattr(self.api, fn) if isinstance(fn, str) else fn
            return target(*args, **kw)

        m = metrics.current()
        try:
            with m.timing(m.docker_call, fn if isinstance(fn, str) else fn.__name__):
                return await trio.to_thread.run_sync(run, abandon_on_cancel=abandon)
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            raise SwarmError(f"{what}: {exc}") from exc

    async def aclose(self) -> None:
        if self._api is not None:
            await trio.to_thread.run_sync(self._api.close)

    async def list_nodes(self) -> list[NodeInfo]:
        """Every node of the Swarm. Raises :class:`SwarmError`."""
        return [_node_info(n) for n in await self._call("list nodes", "nodes")]

    async def join_info(self) -> SwarmJoinInfo:
        """What a new worker needs to join: the Swarm's worker join token and its managers' addresses (HOST:PORT).
        Raises :class:`SwarmError`."""
        swarm = await self._call("inspect the swarm", "inspect_swarm")
        nodes = await self._call("list nodes", "nodes", filters={"role": "manager"})
        managers = sorted((n.get("ManagerStatus") or {}).get("Addr", "") for n in nodes)
        return SwarmJoinInfo(swarm["JoinTokens"]["Worker"], tuple(a for a in managers if a))

    async def update_node(self, node_id: str, *, labels_add: dict[str, str] | None = None,
                          labels_remove: tuple[str, ...] = (), availability: str | None = None) -> NodeInfo:
        """Change a node's labels and/or availability (``active``, ``pause``, ``drain``); other labels stay.
        Retried once when another writer changed the node in between (Swarm's version check). Not abandoned on
        cancellation. Raises ``docker.errors.NotFound`` for an unknown node, :class:`SwarmError`."""

        def update() -> dict[str, Any]:
            for attempt in range(2):
                node = self.api.inspect_node(node_id)
                spec = dict(node.get("Spec") or {})
                labels = {k: v for k, v in (spec.get("Labels") or {}).items() if k not in labels_remove}
                labels.update(labels_add or {})
                spec["Labels"] = labels
                if availability is not None:
                    spec["Availability"] = availability
                try:
                    self.api.update_node(node_id, node["Version"]["Index"], spec)
                    return self.api.inspect_node(node_id)
                except docker.errors.APIError as exc:
                    if attempt or "update out of sequence" not in str(exc):
                        raise
            raise AssertionError("unreachable")

        return _node_info(await self._call(f"update node {node_id}", update, abandon=False))

    async def remove_node(self, node_id: str) -> bool:
        """Take a node out of the Swarm (forced: the node need not be down). ``False`` if it was not there."""
        try:
            await self._call(f"remove node {node_id}", "remove_node", node_id, force=True, abandon=False)
            return True
        except docker.errors.NotFound:
            return False

    @contextmanager
    def save_image(self, image_id: str, *, read_timeout: float = 300.0) -> Iterator[Iterator[bytes]]:
        """The ``docker save`` stream of ``image_id`` from the manager's engine, in chunks. Blocking: for a worker
        thread (:mod:`cumulus.resources.image_store` reads it). Each read waits at most ``read_timeout`` seconds
        (the engine writes the whole image out before its first byte). Raises :class:`SwarmError`."""
        try:
            response = self.api._get(self.api._url("/images/{0}/get", image_id), stream=True, timeout=read_timeout)
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            raise SwarmError(f"save image {image_id}: {exc}") from exc
        try:
            try:
                self.api._raise_for_status(response)
            except docker.errors.NotFound as exc:
                raise SwarmError(f"the image {image_id} is not on the Swarm manager's engine ({self.docker_url}): "
                                 "load it there (docker load)") from exc
            except docker.errors.APIError as exc:
                raise SwarmError(f"save image {image_id}: {exc}") from exc
            yield response.iter_content(1 << 20, False)
        finally:
            response.close()

    async def task_states(self, labels: dict[str, str] | None = None) -> list[TaskState]:
        """Every task whose container spec carries ``labels`` (e.g. ``{"cumulus.supervisor_id": S}``), in one API
        call (cheap enough to poll every 100-250 ms). Raises :class:`SwarmError`."""
        filters = {"label": _label_filter(labels)} if labels else None
        tasks = await self._call("list tasks", "tasks", filters=filters)
        return [_task_state(t) for t in tasks]

    async def list_services(self, labels: dict[str, str] | None = None) -> list[ServiceInfo]:
        """Services carrying ``labels``. Raises :class:`SwarmError`."""
        filters = {"label": _label_filter(labels)} if labels else None
        services = await self._call("list services", "services", filters=filters)
        return [ServiceInfo(s["ID"], (s.get("Spec") or {}).get("Name", ""),
                            dict((s.get("Spec") or {}).get("Labels") or {}), s.get("CreatedAt"))
                for s in services]

    async def create_service(self, req: ServiceRequest) -> ServiceHandle:
        """Create the service for ``req`` (see :func:`build_service_spec`). Not abandoned on cancellation: if the
        call completes, the service exists, and the caller's cleanup must remove it (by name/label).
        Raises :class:`InvalidRequest` or :class:`SwarmError` (e.g. a service of that name already exists)."""
        kwargs = build_service_spec(req)
        try:
            res = await self._call(f"create service {req.service_name}", "create_service",
                                   abandon=False, **kwargs)
        except docker.errors.NotFound as exc:
            raise SwarmError(f"create service {req.service_name}: {exc}") from exc
        return ServiceHandle(res["ID"], req.service_name, req.job_id)

    async def remove_service(self, service_id: str) -> bool:
        """Remove a service (by id or name). ``True`` if it was removed, ``False`` if it did not exist (fine).
        Returns as soon as the manager accepted it; the container stops afterwards (see :func:`wait_gone`)."""
        try:
            await self._call(f"remove service {service_id}", "remove_service", service_id, abandon=False)
            return True
        except docker.errors.NotFound:
            return False

    async def wait_gone(self, service_id: str, job_id: str, *, timeout: float, poll: float = 0.02,
                        give_up: Callable[[], bool] = lambda: False) -> bool:
        """Wait until no task of ``service_id`` (labelled ``job_id``) is left; Swarm drops a removed service's
        tasks only after the worker removed their containers. ``True`` if that happened within ``timeout``
        (``False`` e.g. while the node is down, or as soon as ``give_up()`` is true). Never raises
        :class:`SwarmError` (retries)."""
        with trio.move_on_after(timeout):
            while not give_up():
                try:
                    tasks = await self.task_states({LABEL_JOB: job_id})
                    if not any(t.service_id == service_id for t in tasks):
                        return True
                except SwarmError:
                    pass
                await trio.sleep(poll)
        return False


__all__ = [
    "TERMINAL_STATES", "NodeInfo", "ServiceHandle", "ServiceInfo", "SwarmClient", "SwarmError", "SwarmJoinInfo",
    "TaskState",
]
