"""Docker Swarm, through the manager's API (docker-py): job services, their tasks, their logs, the node list.

Every blocking docker-py call runs in a worker thread (``trio.to_thread.run_sync``). Read-only calls are abandoned
on cancellation (their thread finishes in the background, harmlessly); calls that change the Swarm (create,
remove) are not, so that a cancelled caller never leaves a service it does not know about.

Only the manager's socket is used; nothing here talks to a worker's own dockerd.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import socket
import struct
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, TypeVar

import docker
import docker.errors
import requests
import trio
from docker.types import ContainerSpec, Mount, Placement, RestartPolicy, ServiceMode, TaskTemplate

from cumulus.errors import CumulusError, InvalidRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PENDING_LINES = 10_000  # log lines read but not yet taken by the Trio side: the reader waits beyond this
LABEL_JOB = "cumulus.job_id"
LABEL_SUPERVISOR = "cumulus.supervisor_id"
LABEL_PARTITION = "cumulus.partition_id"
LABEL_DEVICE = "cumulus.device_index"
CODE_MOUNT = "/cumulus/code"
OUTPUT_MOUNT = "/cumulus/output"
LEASE_MOUNT = "/cumulus/lease"
DEFAULT_COMMAND = ("python3", "/opt/cumulus/runner.py")
SERVICE_PREFIX = "cumulus-"
#: Task states after which the task's container no longer runs.
TERMINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE_ID = re.compile(r"^[a-z0-9]{10,64}$")


class SwarmError(CumulusError):
    """A Docker API call failed; the message says which and why."""


# --------------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ServiceRequest:
    """Everything needed to run one job as a one-task Swarm service pinned to one node.

    ``network``: ``"none"`` (default) or ``"host"``. Swarm cannot attach a service to the local ``none`` network
    (moby/moby#44403), so ``"none"`` means *no attachment*: the container gets the worker dockerd's default
    network mode, which is loopback only when that dockerd runs with ``--bridge=none`` (as the local cluster's
    do; real workers must be configured the same way for ``none`` to mean no network).
    ``user``: optional ``uid[:gid]`` for the container process (default: the image's, i.e. root).
    ``lease_dir``: optional worker directory of the job's partition lease (``JobFiles.lease_dir``), mounted
    read-only at ``/cumulus/lease``: the runner's watchdog kills the job when the holder writes ``expired`` there.
    """

    job_id: str
    supervisor_id: str
    node_id: str
    image: str
    device_index: int
    partition_id: str
    code_dir: str
    output_dir: str
    env: dict[str, str] = field(default_factory=dict)
    network: str = "none"
    command: list[str] | None = None
    gpu_uuid: str | None = None
    stop_grace: float = 1.0
    user: str | None = None
    lease_dir: str | None = None

    @property
    def service_name(self) -> str:
        return SERVICE_PREFIX + self.job_id


def build_service_spec(req: ServiceRequest) -> dict[str, Any]:
    """The keyword arguments of ``docker.APIClient.create_service`` for ``req`` (pure; no Docker needed).

    Raises :class:`InvalidRequest` if a field cannot be turned into a safe spec (job id, node id, image not
    referenced by id, network, env names, stop grace, paths).
    """
    from cumulus.resources.files import check_job_id  # one job-id rule for files and services

    check_job_id(req.job_id)
    if not _NODE_ID.match(req.node_id or ""):
        raise InvalidRequest(f"invalid node id {req.node_id!r}")
    if not req.image.startswith("sha256:") or not re.match(r"^sha256:[0-9a-f]{64}$", req.image):
        raise InvalidRequest(f"image must be referenced by id (sha256:<64 hex>), got {req.image!r}")
    if req.network not in ("none", "host"):
        raise InvalidRequest(f"network must be 'none' or 'host', got {req.network!r}")
    if not (0 <= req.stop_grace <= 300) or math.isnan(req.stop_grace):
        raise InvalidRequest(f"stop_grace must be within 0..300 s, got {req.stop_grace!r}")
    for path in (req.code_dir, req.output_dir) + ((req.lease_dir,) if req.lease_dir is not None else ()):
        if not path.startswith("/") or ".." in path.split("/"):
            raise InvalidRequest(f"mount source must be an absolute path without '..': {path!r}")
    if not req.supervisor_id or "=" in req.supervisor_id:
        raise InvalidRequest(f"invalid supervisor id {req.supervisor_id!r}")

    env: dict[str, str] = {}
    for key, value in req.env.items():
        if not _ENV_KEY.match(str(key)):
            raise InvalidRequest(f"invalid environment variable name {key!r}")
        env[str(key)] = str(value)
    # Cumulus's own variables win over the user's.
    env["CUMULUS_JOB_ID"] = req.job_id
    env["CUMULUS_PARTITION_ID"] = req.partition_id
    env["CUMULUS_DEVICE_INDEX"] = str(int(req.device_index))
    # Under the NVIDIA runtime, expose exactly the leased GPU, or none at all.
    env["NVIDIA_VISIBLE_DEVICES"] = req.gpu_uuid if req.gpu_uuid else "void"

    labels = {
        LABEL_JOB: req.job_id,
        LABEL_SUPERVISOR: req.supervisor_id,
        LABEL_PARTITION: req.partition_id,
        LABEL_DEVICE: str(int(req.device_index)),
    }
    mounts = [
        Mount(target=CODE_MOUNT, source=req.code_dir, type="bind", read_only=True),
        Mount(target=OUTPUT_MOUNT, source=req.output_dir, type="bind", read_only=False),
    ]
    if req.lease_dir is not None:
        mounts.append(Mount(target=LEASE_MOUNT, source=req.lease_dir, type="bind", read_only=True))
    container = ContainerSpec(
        image=req.image,
        command=list(req.command) if req.command else list(DEFAULT_COMMAND),
        env=[f"{k}={v}" for k, v in sorted(env.items())],
        labels=dict(labels),
        mounts=mounts,
        stop_grace_period=int(req.stop_grace * 1e9),
        init=True,
        user=req.user,
    )
    template = TaskTemplate(
        container_spec=container,
        restart_policy=RestartPolicy(condition="none", delay=0, max_attempts=0),
        placement=Placement(constraints=[f"node.id=={req.node_id}"]),
        networks=["host"] if req.network == "host" else None,
    )
    return {
        "task_template": template,
        "name": req.service_name,
        "labels": dict(labels),
        "mode": ServiceMode("replicated", replicas=1),
    }


# ------------------------------------------------------------------------------------------------ what we read
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


def _label_filter(labels: dict[str, str] | None) -> list[str]:
    return [f"{k}={v}" if v is not None else k for k, v in (labels or {}).items()]


# ------------------------------------------------------------------------------------------------- the client
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

        try:
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
        nodes = await self._call("list nodes", "nodes")
        out = []
        for n in nodes:
            spec, status, desc = n.get("Spec") or {}, n.get("Status") or {}, n.get("Description") or {}
            out.append(NodeInfo(
                id=n["ID"],
                hostname=desc.get("Hostname", ""),
                state=str(status.get("State", "unknown")).lower(),
                availability=str(spec.get("Availability", "")).lower(),
                role=str(spec.get("Role", "")).lower(),
                labels=dict(spec.get("Labels") or {}),
                address=status.get("Addr"),
            ))
        return out

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

    async def scale_to_zero(self, service_id: str) -> bool:
        """Set the service's replicas to 0 (its task is shut down, the service and the task history stay).
        ``False`` if the service does not exist."""

        def _scale() -> None:
            info = self.api.inspect_service(service_id)
            spec = info["Spec"]
            self.api.update_service(
                service_id, version=info["Version"]["Index"], task_template=spec["TaskTemplate"],
                name=spec["Name"], labels=spec.get("Labels"), mode=ServiceMode("replicated", replicas=0),
            )

        try:
            await self._call(f"scale {service_id} to 0", _scale, abandon=False)
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


@asynccontextmanager
async def open_service(
    client: SwarmClient, request: ServiceRequest, *, remove_timeout: float = 20.0
) -> AsyncIterator[ServiceHandle]:
    """Create the job's service and yield its :class:`ServiceHandle`.

    Leaving the block (normally, by exception or by cancellation) removes the service and waits until its task
    is gone, i.e. the container was stopped (SIGTERM to the init, SIGKILL after ``stop_grace``) and removed on
    the worker. Shielded and bounded by ``remove_timeout``; idempotent (already removed = fine). Afterwards
    ``handle.removal_confirmed`` tells whether the disappearance was seen (``False``: node down, or the manager
    unreachable; the service is then found again by its labels).
    If creation is cancelled after Docker accepted it, the service is removed by name before re-raising.
    """
    handle = None
    try:
        handle = await client.create_service(request)
    finally:
        if handle is None:
            # The create call may have gone through even though we did not see its answer (it is never
            # abandoned, but a Cancelled arriving right after, or a timeout, could hide it): remove by name.
            with trio.move_on_after(remove_timeout, shield=True):
                try:
                    await client.remove_service(request.service_name)
                except SwarmError:
                    pass
    async with _removed_on_exit(client, handle, remove_timeout):
        yield handle


@asynccontextmanager
async def adopt_service(
    client: SwarmClient, service_id: str, job_id: str, *, remove_timeout: float = 20.0
) -> AsyncIterator[ServiceHandle]:
    """Take charge of a job's service that already exists (created by an earlier supervisor, e.g. before a
    restart; found by its labels); yield its :class:`ServiceHandle`. ``service_id``: id or name.

    Raises :class:`SwarmError` if there is no such service (or the manager cannot be asked). Leaving the block
    removes the service and waits until its task is gone, exactly as :func:`open_service` does.
    """
    try:
        info = await client._call(f"inspect service {service_id}", "inspect_service", service_id)
    except docker.errors.NotFound as exc:
        raise SwarmError(f"adopt service {service_id}: no such service") from exc
    handle = ServiceHandle(info["ID"], (info.get("Spec") or {}).get("Name", ""), job_id)
    async with _removed_on_exit(client, handle, remove_timeout):
        yield handle


@asynccontextmanager
async def _removed_on_exit(client: SwarmClient, handle: ServiceHandle, remove_timeout: float) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with trio.move_on_after(remove_timeout, shield=True):
            try:
                await client.remove_service(handle.id)
            except SwarmError as exc:
                log.warning("remove service %s: %s", handle.name, exc)
            handle.removal_confirmed = await client.wait_gone(
                handle.id, handle.job_id, timeout=remove_timeout, give_up=lambda: handle.node_unreachable)
        if not handle.removal_confirmed:
            log.warning("service %s (%s): removal not confirmed %s", handle.name, handle.id,
                        "(its node is unreachable)" if handle.node_unreachable else f"within {remove_timeout:.0f} s")


# --------------------------------------------------------------------------------------------------------- logs
# Docker's multiplexed stream kinds. Kind 3 ("systemerr") is the engine's own message, e.g. "Error grabbing logs:
# ... node X is not available" when the manager cannot reach the node that holds a task's log: not the job's.
_STREAMS = {0: "stdin", 1: "stdout", 2: "stderr", 3: "system"}


class _ChunkedBody:
    """The body of a streamed HTTP/1.1 response, read whatever has arrived at a time (``read``; ``b""`` at its
    end). Docker sends a followed log as one HTTP chunk per frame, and urllib3/http.client return at most one
    chunk per read (several Python calls each), which made reading, not relaying, the cost of every log line.
    This reads the connection's buffered socket file (``http.client.HTTPResponse.fp``, untouched by them before
    the first read) and decodes the chunked coding itself, a buffer at a time. A body that is not chunked is
    passed through."""

    def __init__(self, fp: Any, chunked: bool) -> None:
        self._fp = fp
        self._chunked = chunked
        self._buffer = bytearray()
        self._left = 0  # bytes left of the current chunk, its closing CRLF included
        self._ended = False

    @classmethod
    def of(cls, response: requests.Response) -> Callable[[], bytes]:
        """``read`` for ``response`` (a ``requests`` response opened with ``stream=True``, nothing read yet)."""
        inner = getattr(response.raw, "_fp", None)
        fp = getattr(inner, "fp", None)
        if fp is None or not hasattr(fp, "read1"):  # not the http.client we know: read through urllib3
            return lambda: response.raw.read1(65536)
        return cls(fp, bool(getattr(inner, "chunked", False))).read

    def read(self) -> bytes:
        if not self._chunked:
            return self._fp.read1(65536)
        out = bytearray()
        while not out and not self._ended:
            data = self._fp.read1(65536)
            if not data:
                break
            self._buffer += data
            out += self._decode()
        return bytes(out)

    def _decode(self) -> bytearray:
        buffer, out, pos = self._buffer, bytearray(), 0
        while pos < len(buffer):
            if self._left == 0:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break  # the size line has not all arrived
                size = int(bytes(buffer[pos:end]).split(b";")[0], 16)
                pos = end + 2
                if size == 0:
                    self._ended = True  # the last chunk (trailers, if any, are not read)
                    break
                self._left = size + 2
                continue
            take = min(self._left, len(buffer) - pos)
            data = min(take, max(self._left - 2, 0))
            out += buffer[pos:pos + data]
            pos += take
            self._left -= take
        del buffer[:pos]
        return out


@asynccontextmanager
async def follow_logs(
    client: SwarmClient, service_id: str, *, close_timeout: float = 5.0, max_line: int = 64 * 1024
) -> AsyncIterator[AsyncIterator[tuple[str, str]]]:
    """Follow a service's logs; yields an async iterator of ``(stream, line)`` (``stream`` is ``"stdout"`` or
    ``"stderr"``, or ``"system"`` for the engine's own message about the stream, such as a node whose log cannot
    be read: lines of the job may be missing then; ``line`` without its newline, decoded as UTF-8 with
    replacement, cut at ``max_line`` chars). Lines arrive while the job runs. The iterator ends if Docker ends the
    stream.

    Docker never ends a followed service log by itself, so leaving the block shuts the HTTP connection's socket
    down, which ends the reader thread promptly; that is shielded and bounded by ``close_timeout`` (after which
    the thread, if still blocked, is abandoned; it can only exit). Raises :class:`SwarmError` if the logs
    cannot be opened (e.g. no such service: ``docker.errors.NotFound`` is turned into ``SwarmError`` too).
    """
    params = {"follow": True, "stdout": True, "stderr": True, "details": False, "timestamps": False, "tail": "all"}

    def _open() -> Any:
        api = client.api
        res = api._get(api._url("/services/{0}/logs", service_id), params=params, stream=True, timeout=None)
        api._raise_for_status(res)
        return res

    try:
        response = await client._call(f"logs of {service_id}", _open, abandon=False)
    except docker.errors.NotFound as exc:
        raise SwarmError(f"logs of {service_id}: {exc}") from exc
    raw_sock = client.api._get_raw_response_socket(response)
    sock = getattr(raw_sock, "_sock", raw_sock)
    # Docker sends a frame per line. The reader thread queues lines and wakes the Trio side only when it is not
    # already awake, so a burst of output crosses threads in a few batches instead of one call per line; it
    # waits (backpressure) while MAX_PENDING_LINES are queued.
    pending: collections.deque[tuple[str, str]] = collections.deque()
    condition = threading.Condition()
    state = {"woken": False, "ended": False, "closed": False}
    arrived = [trio.Event()]  # replaced after each wake-up (Trio events are not reset)
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def _wake() -> None:
        arrived[0].set()

    def _reader() -> None:
        buffers: dict[str, bytes] = {"stdout": b"", "stderr": b"", "system": b""}

        def emit(batch: list[tuple[str, str]]) -> None:
            with condition:
                while len(pending) >= MAX_PENDING_LINES and not state["closed"]:
                    condition.wait(0.5)
                if state["closed"]:
                    raise trio.ClosedResourceError
                pending.extend(batch)
                wake, state["woken"] = not state["woken"], True
            if wake:
                token.run_sync_soon(_wake)

        def decode(data: bytes) -> str:
            return data.decode("utf-8", errors="replace")[:max_line]

        try:
            read_body = _ChunkedBody.of(response)
            pending_bytes = bytearray()
            while True:
                # Whatever has arrived (up to 64 KiB), not one read per frame: Docker frames every line.
                chunk = read_body()
                if not chunk:
                    break
                pending_bytes += chunk
                batch: list[tuple[str, str]] = []
                pos = 0
                while len(pending_bytes) - pos >= 8:
                    kind, length = struct.unpack_from(">BxxxL", pending_bytes, pos)
                    if len(pending_bytes) - pos - 8 < length:
                        break  # the rest of this frame has not arrived yet
                    data = bytes(pending_bytes[pos + 8:pos + 8 + length])
                    pos += 8 + length
                    stream = _STREAMS.get(kind, "system")
                    *lines, rest = (buffers.get(stream, b"") + data).split(b"\n")
                    buffers[stream] = rest
                    batch.extend((stream, decode(line)) for line in lines)
                del pending_bytes[:pos]
                if batch:
                    emit(batch)
            tail = [(stream, decode(rest)) for stream, rest in buffers.items() if rest]
            if tail:
                emit(tail)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError, trio.Cancelled):
            pass
        except Exception:  # noqa: BLE001  (socket shut down under us: that is how we stop)
            pass
        finally:
            with condition:
                state["ended"] = True
            try:
                token.run_sync_soon(_wake)
            except trio.RunFinishedError:
                pass

    async def _run_reader() -> None:
        try:
            await trio.to_thread.run_sync(_reader, abandon_on_cancel=True)
        finally:
            done.set()

    async def _lines() -> AsyncIterator[tuple[str, str]]:
        while True:
            await arrived[0].wait()
            with condition:
                batch = list(pending)
                pending.clear()
                ended = state["ended"]
                state["woken"] = False
                arrived[0] = trio.Event()
                condition.notify_all()
            for count, item in enumerate(batch, 1):
                yield item
                if count % 256 == 0:
                    await trio.lowlevel.checkpoint()  # a long burst must not hold the whole loop
            if ended:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_reader)
        iterator = _lines()
        try:
            yield iterator
        finally:
            with trio.move_on_after(close_timeout, shield=True):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                with condition:
                    state["closed"] = True
                    condition.notify_all()
                await iterator.aclose()
                await done.wait()
            try:
                response.close()
            except Exception:  # noqa: BLE001
                pass
            nursery.cancel_scope.cancel()


__all__ = [
    "CODE_MOUNT", "DEFAULT_COMMAND", "LABEL_JOB", "LABEL_SUPERVISOR", "LEASE_MOUNT", "OUTPUT_MOUNT", "NodeInfo",
    "ServiceHandle", "ServiceInfo", "ServiceRequest", "SwarmClient", "SwarmError", "TaskState", "adopt_service",
    "build_service_spec", "follow_logs", "open_service",
]
