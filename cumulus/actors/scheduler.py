"""Scheduler: the one owner of device shares, the queue and placement decisions.

Chronos keeps partitions inside the process that made them, so nothing on a worker can tell how much of a device
is promised: the scheduler's accounting is the truth. Its state:

* the inventory of every worker node (devices, ready or not, draining or not: a draining node takes no new job,
  :mod:`cumulus.actors.drain`), sent by the ClusterActor's node sync (:class:`NodesChanged`), and whether the
  supervisor is connected to it, sent by its WorkerActor (:class:`WorkerHealth`);
* every reservation (job id -> node, devices, share);
* the queue of jobs waiting for capacity: higher priority first, then arrival order, strictly (nobody overtakes
  the head), bounded by ``jobs.max_queue``;
* what each user holds (jobs, GPU share): a job whose owner is at their ``max_running`` or ``max_gpu``
  (``spec.limits``) waits in the queue even when there is room, and is passed over, without blocking anyone,
  until one of the owner's jobs gives its share back.

A job asks once: ``Reserve`` answers a :class:`Reservation` at once, or :class:`Queued`, and then the job gets
:class:`QueuePosition` updates and, when capacity comes back, :class:`Granted` - messages to its actor. A job
gives everything back with :class:`Release`, always, whatever happened: it is idempotent, and since each
sender's messages arrive in order, a grant the job never saw is released too. Where a share goes is decided by
:func:`cumulus.placement.place`, a pure function over a snapshot.

After a restart, jobs being re-adopted reserve exactly the devices they hold; until they have (or gave up), no new
job is placed on their node (:class:`ExpectAdoptions`).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from cumulus import metrics
from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.scheduler_messages import (Admit, Availability, ExpectAdoptions, Granted, ListWorkers,
                                               NodeInventory, NodeJobs, NodesChanged, QueuePosition, Queued, Release,
                                               Reservation, Reserve, WorkerHealth)
from cumulus.backends import WorkerUnavailable
from cumulus.config import Settings
from cumulus.errors import ActorDied, CapacityExhausted, Unsatisfiable
from cumulus.devices import DeviceInfo, WorkerInfo
from cumulus.jobs import JobSpec, Placement
from cumulus.quotas import OwnerHoldings
from cumulus.placement import DeviceLoad, NodeView, Request, can_ever_fit, fits_exactly, place

log = logging.getLogger(__name__)


# ---- state --------------------------------------------------------------------------------------------------------
@dataclass
class _Node:
    inventory: NodeInventory
    connected: bool = False
    reason: str = "connecting"
    takes_jobs: bool = True  # False: connected, but no new job yet (WorkerHealth.takes_jobs)
    used: dict[int, dict[str, float]] = field(default_factory=dict)  # device index -> job id -> share
    _devices: tuple[DeviceLoad, ...] | None = None  # the devices' loads, rebuilt after a change

    @property
    def available(self) -> bool:
        return self.inventory.ready and self.connected and self.takes_jobs

    def add(self, job_id: str, device_indexes: tuple[int, ...], share: float) -> None:
        for index in device_indexes:
            self.used.setdefault(index, {})[job_id] = share
        self._devices = None

    def remove(self, job_id: str, device_indexes: tuple[int, ...]) -> None:
        for index in device_indexes:
            self.used.get(index, {}).pop(job_id, None)
        self._devices = None

    def set_inventory(self, inventory: NodeInventory) -> None:
        self.inventory, self._devices = inventory, None

    def jobs(self) -> int:
        return len({job for shares in self.used.values() for job in shares})

    def view(self, *, available: bool) -> NodeView:
        if self._devices is None:
            self._devices = tuple(DeviceLoad(d, sum(shares.values()), len(shares)) for d in self.inventory.devices
                                  for shares in (self.used.get(d.index, {}),))
            self._jobs = self.jobs()
        return NodeView(self.inventory.node_id, self.inventory.hostname, self._devices, self._jobs, available)


@dataclass(eq=False)
class _Waiting:
    job_id: str
    spec: JobSpec
    ticket: int
    notify: ActorRef | None
    seq: int
    position: int = 0


class Scheduler(Actor):
    name = "scheduler"
    mailbox_size = 4096

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.nodes: dict[str, _Node] = {}
        self.held: dict[str, Reservation] = {}
        self.queue: list[_Waiting] = []  # sorted: higher priority first, then arrival
        self.adopting: dict[str, str] = {}  # job id -> node id, until its exact reservation is made
        self.links: dict[str, tuple[bool, str, bool]] = {}  # node id -> (connected, reason, takes_jobs)
        self.owners = OwnerHoldings()
        self._seq = itertools.count()

    async def handle(self, message: Any) -> Any:
        match message:
            case Reserve(job_id, spec, ticket, notify, exact):
                return self._reserve(job_id, spec, ticket, notify, exact)
            case Release(job_id):
                self._release(job_id)
                return None
            case Admit(spec):
                self._admit(spec)
                return None
            case NodesChanged(nodes):
                self._nodes_changed(nodes)
                return None
            case WorkerHealth(node_id, connected, reason, takes_jobs):
                # Kept also for a node not known yet: its worker may connect before the node list arrives.
                self.links[node_id] = connected, reason, takes_jobs
                node = self.nodes.get(node_id)
                if node is not None:
                    node.connected, node.reason, node.takes_jobs = connected, reason, takes_jobs
                    self._drain()
                return None
            case ExpectAdoptions(job_nodes):
                self.adopting.update(job_nodes)
                return None
            case ListWorkers():
                return sorted((self._info(node) for node in self.nodes.values()), key=lambda w: w.hostname)
            case NodeJobs(node_id):
                return self._jobs_on(node_id)
        raise TypeError(f"scheduler: unknown message {message!r}")

    # ---- admission and reservations ---------------------------------------------------------------------------

    def _request(self, spec: JobSpec) -> Request:
        return Request(spec.gpu, self.settings.cluster.allow_non_gpu_devices)

    def _admit(self, spec: JobSpec) -> None:
        allow = self.settings.cluster.allow_non_gpu_devices
        if not self.nodes:
            raise Unsatisfiable("the cluster has no workers; add one with setup-worker.sh")
        if not can_ever_fit([n.view(available=True) for n in self.nodes.values()], self._request(spec)):
            what = "devices" if allow else "GPUs"
            raise Unsatisfiable(f"no worker has enough {what} for gpu={spec.gpu:g}"
                                + ("" if allow else " (non-GPU devices are not used: cluster.allow_non_gpu_devices)"))
        if len(self.queue) >= self.settings.jobs.max_queue:  # strict order: it would have to wait behind them
            raise CapacityExhausted(f"the queue is full ({len(self.queue)} jobs waiting for capacity; "
                                    "jobs.max_queue): try again later")

    def _reserve(self, job_id: str, spec: JobSpec, ticket: int, notify: ActorRef | None,
                 exact: Placement | None) -> Reservation | Queued:
        if job_id in self.held or any(w.job_id == job_id for w in self.queue):
            raise CapacityExhausted(f"job {job_id} already holds or waits for a reservation")
        if exact is not None:
            return self._reserve_exactly(job_id, exact, spec.owner)
        if not self.queue and not self.owners.at_limit(spec):
            reservation = self._try_place(job_id, spec)
            if reservation is not None:
                return reservation
        if len(self.queue) >= self.settings.jobs.max_queue:
            raise CapacityExhausted(f"no worker has room now, and the queue is full ({self.settings.jobs.max_queue} "
                                    "jobs waiting; jobs.max_queue)")
        waiting = _Waiting(job_id, spec, ticket, notify, next(self._seq))
        self.queue.append(waiting)
        self.queue.sort(key=lambda w: (-w.spec.priority, w.seq))
        self._number_queue(skip=waiting)
        queued = Queued(waiting.position)
        self._drain()  # it may fit now: ahead of the others, or behind jobs held back by their owners' limits
        return queued

    def _reserve_exactly(self, job_id: str, placement: Placement, owner: str) -> Reservation:
        node = self.nodes.get(placement.node_id)
        if node is None or not node.connected:
            raise WorkerUnavailable(f"worker {placement.worker} is not connected (yet)")
        devices = placement.device_indexes or (placement.device_index,)
        if not fits_exactly(node.view(available=True), devices, placement.share):
            raise CapacityExhausted(f"{placement.worker}: devices {devices} cannot take {placement.share:g} again")
        reservation = self._hold(job_id, node, devices, placement.share, owner)  # its share first, then the waiting
        if self.adopting.pop(job_id, None) is not None:
            self._drain()
        return reservation

    def _try_place(self, job_id: str, spec: JobSpec) -> Reservation | None:
        started = time.perf_counter()
        adopting = set(self.adopting.values())
        views = [node.view(available=node.available and not node.inventory.draining and node_id not in adopting)
                 for node_id, node in self.nodes.items()]  # a draining node takes no new job
        choice = place(views, self._request(spec), max_jobs_per_device=self.settings.jobs.max_jobs_per_device)
        metrics.current().phase("placement", time.perf_counter() - started)  # each try, placed or not
        if choice is None:
            return None
        return self._hold(job_id, self.nodes[choice.node_id], choice.device_indexes, choice.share, spec.owner)

    def _hold(self, job_id: str, node: _Node, device_indexes: tuple[int, ...], share: float,
              owner: str) -> Reservation:
        by_index = {d.index: d for d in node.inventory.devices}
        node.add(job_id, device_indexes, share)
        self.owners.add(owner, job_id, share * len(device_indexes))
        first = by_index[device_indexes[0]]
        reservation = Reservation(job_id, node.inventory.hostname, node.inventory.node_id, tuple(device_indexes),
                                  share, tuple(by_index[i].uuid if by_index[i].is_gpu else None
                                               for i in device_indexes), first.name, first.is_gpu)
        self.held[job_id] = reservation
        return reservation

    def _release(self, job_id: str) -> None:
        self.adopting.pop(job_id, None)  # a re-adoption that gave up
        for waiting in self.queue:
            if waiting.job_id == job_id:
                self.queue.remove(waiting)
                self._number_queue()
                break
        reservation = self.held.pop(job_id, None)
        self.owners.remove(job_id)
        if reservation is not None:
            node = self.nodes.get(reservation.node_id)
            if node is not None:
                node.remove(job_id, reservation.device_indexes)
        self._drain()

    # ---- the queue --------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Place waiting jobs in order (priority, then arrival) until one does not fit; a job whose owner is at
        their limit is passed over (it waits for its owner's jobs, not for capacity)."""
        placed = False
        for waiting in list(self.queue):
            if waiting not in self.queue:  # granted by a drain that a dead job's release started meanwhile
                continue
            if self.owners.at_limit(waiting.spec):
                continue
            reservation = self._try_place(waiting.job_id, waiting.spec)
            if reservation is None:
                break
            self.queue.remove(waiting)
            placed = True
            self._tell(waiting.notify, Granted(waiting.ticket, reservation), on_dead=waiting.job_id)
        if placed:
            self._number_queue()

    def _number_queue(self, skip: _Waiting | None = None) -> None:
        for position, waiting in enumerate(self.queue, start=1):
            if waiting.position != position:
                waiting.position = position
                if waiting is not skip:
                    self._tell(waiting.notify, QueuePosition(waiting.ticket, position))

    def _tell(self, job: ActorRef | None, message: Granted | QueuePosition, *, on_dead: str = "") -> None:
        """Send ``message`` to a job without waiting on its mailbox. A grant must arrive: when the mailbox is full
        it is delivered by a task; when the job is gone, its reservation is released (``on_dead``)."""
        if job is None:
            return
        try:
            job.cast_nowait(message)
        except ActorDied:
            if on_dead:
                self._release(on_dead)
        except trio.WouldBlock:
            if isinstance(message, Granted):
                self.start_soon(self._deliver, job, message)

    async def _deliver(self, job: ActorRef, message: Granted) -> None:
        try:
            await job.cast(message)
        except ActorDied:
            await self.ref.cast(Release(message.reservation.job_id))

    # ---- nodes ------------------------------------------------------------------------------------------------

    def _nodes_changed(self, nodes: tuple[NodeInventory, ...]) -> None:
        current = {inv.node_id: inv for inv in nodes}
        for node_id in [n for n in self.nodes if n not in current]:
            log.warning("scheduler: worker %s left", self.nodes.pop(node_id).inventory.hostname)
        for node_id, inventory in current.items():
            node = self.nodes.get(node_id)
            if node is None:
                node = self.nodes[node_id] = _Node(inventory, *self.links.get(node_id, (False, "connecting")))
                for reservation in self.held.values():  # what its jobs held before it left
                    if reservation.node_id == node_id:
                        node.add(reservation.job_id, reservation.device_indexes, reservation.share)
            else:
                node.set_inventory(inventory)
        self._drain()

    def _jobs_on(self, node_id: str) -> tuple[str, ...]:
        """The jobs holding a share of the node, or re-adopting one there."""
        return tuple(sorted({r.job_id for r in self.held.values() if r.node_id == node_id}
                            | {job_id for job_id, node in self.adopting.items() if node == node_id}))

    def _info(self, node: _Node) -> WorkerInfo:
        inv = node.inventory
        if not inv.ready:
            state, reason = "down", f"node is {inv.status}"
        elif not node.connected:
            state, reason = "unreachable", node.reason
        elif not node.takes_jobs:  # e.g. its worker image is being pulled
            state, reason = "preparing", node.reason
        else:
            state, reason = "ready", ""
        view = node.view(available=node.available)
        return WorkerInfo(
            node_id=inv.node_id, hostname=inv.hostname, ssh_address=inv.ssh_address, state=state,
            healthy=node.available,
            devices=tuple(DeviceInfo(**{**d.info.__dict__, "used_share": round(d.used, 6)}) for d in view.devices),
            running_jobs=view.jobs, reason=reason, labels=inv.labels,
            availability=(Availability.ACTIVE if not inv.draining else Availability.DRAINING
                          if self._jobs_on(inv.node_id) else Availability.DRAINED).value,
        )


__all__ = ["Admit", "Availability", "ExpectAdoptions", "Granted", "ListWorkers", "NodeInventory", "NodeJobs",
           "NodesChanged", "QueuePosition", "Queued", "Release", "Reservation", "Reserve", "Scheduler", "WorkerHealth"]
