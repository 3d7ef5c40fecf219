"""A worker's warm services: a few job services created before their jobs, each pinned to the node and one device,
whose container is started and waits for one job (:mod:`cumulus.resources.warm`). Run by the node's WorkerActor
while its connection is up and its worker image is there; the actor answers :class:`ClaimWarm` from the pool.

Each idle warm service is owned here (its directories, its service, the watch of its task) until a job takes it:
:meth:`WarmPool.claim` hands the service and its directories over (``handed_over``: this owner leaves them be)
and the job's attempt owns and removes them like its own. Each warm container runs exactly one job. A slot whose
service was taken, or whose container ended while idle, makes a new one at once; one that fails to make it waits
(backoff) and tries again. Idle warm services hold no share and are not jobs: the Scheduler never sees them.
Leaving :meth:`WarmPool.run` (connection lost, actor stopping) removes every idle one; after a supervisor restart
the cluster reaps the previous process's as orphans and the pools make new ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import trio

from cumulus import metrics
from cumulus.actors.base import ActorRef
from cumulus.actors.service_request import job_service_request
from cumulus.actors.watcher import Unwatch, Watch
from cumulus.backends import NodeBackend, SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied
from cumulus.devices import DeviceInfo
from cumulus.resources.warm import new_warm_id

log = logging.getLogger(__name__)

RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # a slot whose warm service could not be made waits this long
CLAIM_SECONDS = 30.0  # the longest a claim may take: it waits on the watcher, and the caller shields it


@dataclass(frozen=True)
class ClaimWarm:
    """Call to a WorkerActor: a warm service for a job whose own service request has ``key``
    (``ServiceRequest.create_time_key``); the answer is a :class:`WarmService`, now the caller's, or ``None``."""

    key: tuple[Any, ...]


@dataclass(frozen=True)
class WarmService:
    """A warm service handed to a job: its service and its task's job label (the warm id, also the name of its
    directories on the worker until the job renames them)."""

    service_id: str
    name: str
    warm_id: str


@dataclass
class _Idle:
    key: tuple[Any, ...]
    handle: Any  # the ServiceHandle
    dirs: Any  # the WarmDirs
    ready: bool = False  # its task runs: the runner waits on its FIFO (or is about to)
    claim_settled: trio.Event | None = None  # a claim took it from the pool; set once it is handed over, or not


class WarmPool:
    """The warm services of one worker. Its state is written only by the WorkerActor's tasks that run it."""

    def __init__(self, worker: str, settings: Settings, swarm: SwarmBackend, watcher: ActorRef) -> None:
        self.worker = worker
        self.settings = settings
        self.swarm = swarm
        self.watcher = watcher
        self._idle: dict[str, _Idle] = {}  # warm id -> idle warm service
        self.made = 0  # warm services made (a test's and the status's count)

    def counts(self) -> tuple[int, int]:
        """(ready, starting) idle warm services."""
        ready = sum(1 for idle in self._idle.values() if idle.ready)
        return ready, len(self._idle) - ready

    async def claim(self, key: tuple[Any, ...]) -> WarmService | None:
        """Hand a ready warm service whose key is ``key`` to the caller, or ``None``. Its task watch ends here,
        before the answer, so the job's own watch of that task is never cut by it.

        Cancellation: a claim cancelled before it answers hands nothing over (the slot removes the service).
        Once it answers, the service is the caller's, who must receive the answer: callers shield the call
        (:func:`cumulus.actors.warm_step.take_warm`)."""
        warm_id = next((w for w, idle in self._idle.items() if idle.ready and idle.key == key), None)
        if warm_id is None:
            return None
        idle = self._idle.pop(warm_id)
        idle.claim_settled = trio.Event()
        self._publish()
        try:
            try:
                await self.watcher.call(Unwatch(warm_id))
            except ActorDied:
                pass
            # No checkpoint from here to the caller's answer: handed over means the answer is delivered.
            idle.handle.handed_over = idle.dirs.handed_over = True
        finally:  # a claim cancelled before this point leaves it to its slot, which removes it
            idle.claim_settled.set()
        return WarmService(idle.handle.id, idle.handle.name, warm_id)

    async def run(self, backend: NodeBackend, node_id: str, devices: list[DeviceInfo]) -> None:
        """Keep ``jobs.warm_per_device`` warm services per device of ``devices`` until cancelled; then remove the
        idle ones (each slot's own release, shielded and bounded)."""
        try:
            async with trio.open_nursery() as nursery:
                for device in devices:
                    for _ in range(self.settings.jobs.warm_per_device):
                        nursery.start_soon(self._slot, backend, node_id, device)
        finally:
            self._publish()

    async def _slot(self, backend: NodeBackend, node_id: str, device: DeviceInfo) -> None:
        failures = 0
        while True:
            try:
                await self._one(backend, node_id, device)
                failures = 0
            except Exception as error:  # the node or the manager refused: the slot waits and tries again
                log.warning("%s: warm service on device %d: %s", self.worker, device.index, error)
                metrics.current().warm_failures.labels(self.worker, "make").inc()
                await trio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1

    async def _one(self, backend: NodeBackend, node_id: str, device: DeviceInfo) -> None:
        """Make one warm service and keep it until a job takes it or its container ends."""
        warm_id = new_warm_id(self.settings.supervisor_id, node_id)
        request = job_service_request(self.settings, None, job_id=warm_id, node_id=node_id, device_index=device.index,
                                      gpu_uuid=device.uuid, job_user=backend.job_user,
                                      lease_dir=backend.lease_dir(warm_id))
        async with backend.open_warm_dirs(warm_id) as dirs:
            request = replace(request, code_dir=dirs.code_dir, output_dir=dirs.output_dir)
            updates = await self.watcher.call(Watch(warm_id))
            taken = False
            try:
                async with self.swarm.open_service(request) as handle:
                    # Idle, it holds nothing: its removal need not wait for its container's end (the worker's
                    # dockerd stops it), which on a lost node no one could report anyway. A job that takes it
                    # owns it through a handle of its own.
                    handle.confirm_removal = False
                    idle = self._idle[warm_id] = _Idle(request.create_time_key(), handle, dirs)
                    self.made += 1
                    metrics.current().warm_made.labels(self.worker).inc()
                    self._publish()
                    try:
                        await self._follow(idle, updates)
                    finally:
                        if idle.claim_settled is not None:  # the watch ended because a claim took it
                            with trio.move_on_after(CLAIM_SECONDS, shield=True):
                                await idle.claim_settled.wait()
                        taken = handle.handed_over
                        self._idle.pop(warm_id, None)
                        self._publish()
            finally:
                if not taken:  # a job that took it has the watch of its task now (claim ended ours)
                    with trio.move_on_after(5, shield=True):
                        try:
                            await self.watcher.call(Unwatch(warm_id))
                        except ActorDied:
                            pass

    async def _follow(self, idle: _Idle, updates: trio.MemoryReceiveChannel[Any]) -> None:
        """Until a job takes it (the watch is closed by :meth:`claim`) or its container ends while idle."""
        async for task in updates:
            if task.service_id != idle.handle.id:
                continue
            if task.terminal:
                log.warning("%s: warm service %s ended while idle (%s)", self.worker, idle.handle.name, task.state)
                metrics.current().warm_failures.labels(self.worker, "ended").inc()
                return
            if task.state == "running" and not idle.ready:
                idle.ready = True
                self._publish()

    def _publish(self) -> None:
        ready, starting = self.counts()
        gauge = metrics.current().warm_services
        gauge.labels(self.worker, "ready").set(ready)
        gauge.labels(self.worker, "starting").set(starting)


def warm_devices(devices: list[DeviceInfo], allow_non_gpu: bool) -> list[DeviceInfo]:
    """The devices jobs may be placed on: the ones that get warm services."""
    return [d for d in devices if d.is_gpu or allow_non_gpu]


__all__ = ["ClaimWarm", "WarmPool", "WarmService", "warm_devices"]
