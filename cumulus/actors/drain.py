"""Draining and removing workers (``cumulus worker drain | activate | remove``): the ClusterActor's part that
decides them.

Ownership. The ClusterActor owns a :class:`Drains` and handles every :class:`DrainMessage` through it, in its own
task: the drain decisions, the labels that persist them, the deadline timers and the cancellations all belong to the
cluster. The state lives on the Swarm node itself, as labels, so that a restarted supervisor finds it:
:data:`LABEL_DRAIN` (``draining``), :data:`LABEL_DRAIN_DEADLINE` (a unix time; absent: no deadline) and
:data:`LABEL_DRAIN_BY` (the supervisor id that enforces the deadline: on a Swarm shared by several supervisors, as
in tests, every one avoids the node and only that one cancels its jobs there). The cluster's node sync reads them
into each node's :class:`~cumulus.actors.scheduler.NodeInventory` (:func:`node_inventory`), and the Scheduler places
no new job on a draining node; queued jobs wait for, or go to, the other workers. Which jobs run on a node is the
Scheduler's to say (their reservations, :class:`NodeJobs`): a draining node with none is *drained*. Swarm's own
``drain`` availability is not used for draining: it would stop the running jobs' tasks; it is set only on the way
out of the Swarm.

* Drain: the labels are written, the node list synced at once (the Scheduler hears of it before the call returns),
  and a timer armed for the deadline; when it passes, each job still on the node is cancelled like any cancel
  (its teardown as usual), with a reason that says the worker was drained.
* Activate: the labels are removed (and the Swarm availability set back to ``active``), the timer disarmed.
* Remove: the caller (:meth:`cumulus.app.SupervisorApi.remove_worker`) drains, then asks :class:`RemoveIfDrained`
  until no job runs there; then the node's Swarm availability becomes ``drain`` and it is removed from the Swarm
  (with its labels: the pinned host key ``cumulus.host_key`` goes with it), and the next node sync, run at once,
  stops its WorkerActor and tells the Scheduler it left.

A node is named by hostname, node id, or a unique prefix of its id (:func:`resolve_node`). Only Cumulus workers
(``cumulus.worker=true``) are drained; a Swarm manager is never removed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import trio

from cumulus.actors.job import Cancel
from cumulus.actors.scheduler import Availability, NodeInventory, NodeJobs
from cumulus.actors.worker import parse_devices
from cumulus.errors import ActorDied, CumulusError, InvalidRequest, NotFound, RequestRejected
from cumulus.resources.swarm import NodeInfo

if TYPE_CHECKING:
    from cumulus.actors.cluster import ClusterActor

log = logging.getLogger(__name__)

LABEL_WORKER = "cumulus.worker"
LABEL_DRAIN = "cumulus.drain"
LABEL_DRAIN_DEADLINE = "cumulus.drain_deadline"
LABEL_DRAIN_BY = "cumulus.drain_by"  # the supervisor id that enforces the deadline
USER_LABEL_PREFIX = "cumulus.label."
DRAINING = "draining"


class WorkerChangeFailed(RequestRejected):
    """The Swarm manager did not carry out a drain, activation or removal; the message says which and why."""


# ---- messages (to the ClusterActor) -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DrainMessage:
    """Base of the messages the cluster hands to its :class:`Drains`."""


@dataclass(frozen=True)
class DrainWorker(DrainMessage):
    """Call: no new job goes to worker ``name``; jobs still running there ``timeout`` seconds from now are
    cancelled (0: never). A drain of a draining worker replaces its deadline. Answers a :class:`DrainStatus`."""

    name: str
    timeout: int = 0
    for_removal: bool = False  # the first step of a removal: a Swarm manager is refused before anything changes


@dataclass(frozen=True)
class ActivateWorker(DrainMessage):
    """Call: undo a drain (idempotent). Answers a :class:`DrainStatus`."""

    name: str


@dataclass(frozen=True)
class RemoveIfDrained(DrainMessage):
    """Call: take the draining node out of the Swarm if no job runs there any more. Answers a :class:`DrainStatus`
    (``removed`` says whether it is gone); refused once the worker was activated."""

    node_id: str


@dataclass(frozen=True)
class DrainDeadline(DrainMessage):
    """Cast by a drain's timer: ``deadline`` (unix time) passed for the node."""

    node_id: str
    deadline: float


@dataclass(frozen=True)
class DrainStatus:
    node_id: str
    hostname: str
    availability: Availability
    running_jobs: int = 0
    cancelled_jobs: int = 0  # cancelled because the drain's deadline passed
    removed: bool = False  # taken out of the Swarm


# ---- node labels --------------------------------------------------------------------------------------------------

def drain_deadline(labels: dict[str, str], supervisor_id: str) -> float | None:
    """The unix time after which supervisor ``supervisor_id`` cancels its jobs on a draining node; ``None``: no
    deadline, not draining, or another supervisor's drain (a Swarm shared by several supervisors, as in tests: each
    avoids a draining node, and only the one that drained it cancels)."""
    if labels.get(LABEL_DRAIN) != DRAINING or labels.get(LABEL_DRAIN_BY, supervisor_id) != supervisor_id:
        return None
    try:
        deadline = float(labels.get(LABEL_DRAIN_DEADLINE, ""))
    except ValueError:
        return None
    return deadline if deadline > 0 else None


def node_inventory(node: NodeInfo) -> NodeInventory:
    """What the Scheduler knows of a worker node, from the Swarm's description of it."""
    labels = tuple(sorted((key[len(USER_LABEL_PREFIX):], value) for key, value in node.labels.items()
                          if key.startswith(USER_LABEL_PREFIX)))
    return NodeInventory(node.id, node.hostname, node.labels.get("cumulus.ssh", ""),
                         tuple(parse_devices(node.labels)), node.ready, f"{node.state}/{node.availability}",
                         draining=node.labels.get(LABEL_DRAIN) == DRAINING, labels=labels)


def resolve_node(nodes: Iterable[NodeInfo], name: str) -> NodeInfo:
    """The node that ``name`` names: its id, its hostname, or a prefix of its id that no other node's id has.
    NotFound (unknown) and InvalidRequest (empty, or more than one node) list the candidates."""
    nodes = list(nodes)
    name = name.strip()
    if not name:
        raise InvalidRequest("no worker named: give its hostname or node id (see `cumulus workers`)")
    for matches in ([n for n in nodes if n.id == name], [n for n in nodes if n.hostname == name],
                    [n for n in nodes if n.id.startswith(name)]):
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidRequest(f"{name!r} names {len(matches)} nodes: {_listing(matches)}; give a node id "
                                 "(or a longer prefix of it)")
    workers = [n for n in nodes if n.labels.get(LABEL_WORKER) == "true"]
    raise NotFound(f"no Swarm node is named {name!r} (hostname, node id, or a unique prefix of an id); the workers "
                   f"are: {_listing(workers) or 'none'}")


def _listing(nodes: Iterable[NodeInfo]) -> str:
    return ", ".join(f"{n.hostname} (id {n.id[:12]}, {n.role})" for n in sorted(nodes, key=lambda n: n.hostname))


def refuse_non_worker(node: NodeInfo, *, removing: bool = False) -> None:
    """Only Cumulus workers are drained or activated; a Swarm manager is never removed (RequestRejected)."""
    if node.labels.get(LABEL_WORKER) != "true":
        what = "a Swarm manager" if node.role == "manager" else "a Swarm node"
        raise RequestRejected(f"{node.hostname} (id {node.id[:12]}) is {what}, not a Cumulus worker (it has no "
                              f"{LABEL_WORKER}=true label): Cumulus places no jobs there, and does not drain or "
                              "remove it")
    if removing and node.role == "manager":
        raise RequestRejected(f"{node.hostname} (id {node.id[:12]}) is a Swarm manager: Cumulus does not remove "
                              "managers (demote it first: `docker node demote`)")


# ---- the cluster's part -------------------------------------------------------------------------------------------

class Drains:
    """The drain decisions of one ClusterActor. Runs only in the cluster's task (its handler and node sync);
    its timers only send the cluster a :class:`DrainDeadline`."""

    def __init__(self, cluster: ClusterActor) -> None:
        self.cluster = cluster
        self.timers: dict[str, tuple[float, trio.CancelScope]] = {}  # node id -> (deadline, its timer's scope)
        self.cancelled: dict[str, set[str]] = {}  # node id -> jobs cancelled at its drain's deadline

    async def handle(self, message: DrainMessage) -> DrainStatus | None:
        try:
            match message:
                case DrainWorker(name, timeout, for_removal):
                    return await self._drain(await self._resolve(name), timeout, for_removal)
                case ActivateWorker(name):
                    return await self._activate(await self._resolve(name))
                case RemoveIfDrained(node_id):
                    return await self._remove_if_drained(node_id)
                case DrainDeadline(node_id, deadline):
                    await self._deadline_passed(node_id, deadline)
                    return None
        except RequestRejected:
            raise
        except Exception as error:  # the Swarm manager failed the change: the caller learns why, jobs go on
            log.warning("cluster: %s failed: %s", type(message).__name__, error,
                        exc_info=not isinstance(error, CumulusError))  # not a Swarm error: show where
            raise WorkerChangeFailed(f"the Swarm manager failed the change ({error}); it may be partly done: run the "
                                     "command again") from error
        raise TypeError(f"drains: unknown message {message!r}")

    def synced(self) -> None:
        """After each node sync: a timer for each draining node's deadline (those read back after a restart too),
        none for the others."""
        nodes, me = self.cluster.nodes, self.cluster.settings.supervisor_id
        for node_id in [n for n in self.timers if drain_deadline(nodes[n].labels if n in nodes else {}, me) is None]:
            self.timers.pop(node_id)[1].cancel()
        for node_id in [n for n in self.cancelled if n not in nodes or LABEL_DRAIN not in nodes[n].labels]:
            del self.cancelled[node_id]
        for node_id, node in nodes.items():
            deadline = drain_deadline(node.labels, me)
            if deadline is not None and self.timers.get(node_id, (None,))[0] != deadline:
                self._arm(node_id, deadline)

    # ---- decisions --------------------------------------------------------------------------------------------

    async def _resolve(self, name: str) -> NodeInfo:
        return resolve_node(await self.cluster.swarm.list_nodes(), name)

    async def _drain(self, node: NodeInfo, timeout: int, for_removal: bool) -> DrainStatus:
        refuse_non_worker(node, removing=for_removal)
        labels = {LABEL_DRAIN: DRAINING, LABEL_DRAIN_BY: self.cluster.settings.supervisor_id}
        if timeout:
            labels[LABEL_DRAIN_DEADLINE] = str(round(time.time() + timeout))
        await self.cluster.swarm.update_node(node.id, labels_add=labels,
                                             labels_remove=() if timeout else (LABEL_DRAIN_DEADLINE,))
        await self.cluster._sync_nodes()  # the Scheduler hears of it now, and the timer is armed
        status = await self._status(node.id, node.hostname)
        log.warning("cluster: worker %s draining (%d jobs running there%s)", node.hostname, status.running_jobs,
                    f"; cancelled after {timeout} s" if timeout else "")
        return status

    async def _activate(self, node: NodeInfo) -> DrainStatus:
        refuse_non_worker(node)
        was_draining = LABEL_DRAIN in node.labels
        await self.cluster.swarm.update_node(node.id, labels_remove=(LABEL_DRAIN, LABEL_DRAIN_DEADLINE, LABEL_DRAIN_BY),
                                             availability=None if node.availability == "active" else "active")
        await self.cluster._sync_nodes()
        if was_draining:
            log.warning("cluster: worker %s active again", node.hostname)
        return await self._status(node.id, node.hostname)

    async def _remove_if_drained(self, node_id: str) -> DrainStatus:
        node = self.cluster.nodes.get(node_id)
        if node is None:  # gone from the Swarm meanwhile (removed by hand)
            return DrainStatus(node_id, "", Availability.DRAINED, 0, len(self.cancelled.pop(node_id, ())), True)
        if node.labels.get(LABEL_DRAIN) != DRAINING:
            raise RequestRejected(f"worker {node.hostname} was activated while waiting for its jobs to end: it "
                                  "stays in the Swarm")
        refuse_non_worker(node, removing=True)
        status = await self._status(node_id, node.hostname)
        if status.running_jobs:
            return status
        await self.cluster.swarm.update_node(node_id, availability="drain")  # Swarm starts nothing more there
        await self.cluster.swarm.remove_node(node_id)
        log.warning("cluster: worker %s removed from the Swarm", node.hostname)
        cancelled = len(self.cancelled.pop(node_id, ()))
        try:
            await self.cluster._sync_nodes()  # stops its WorkerActor; the Scheduler forgets it
        except Exception as error:  # it is gone all the same: the next periodic sync does this
            log.warning("cluster: node sync after removing %s failed: %s", node.hostname, error)
        return DrainStatus(node_id, node.hostname, Availability.DRAINED, 0, cancelled, True)

    async def _status(self, node_id: str, hostname: str) -> DrainStatus:
        node = self.cluster.nodes.get(node_id)
        jobs = await self.cluster.scheduler.call(NodeJobs(node_id))
        if node is None or node.labels.get(LABEL_DRAIN) != DRAINING:
            availability = Availability.ACTIVE
        else:
            availability = Availability.DRAINING if jobs else Availability.DRAINED
        return DrainStatus(node_id, hostname, availability, len(jobs), len(self.cancelled.get(node_id, ())))

    # ---- deadlines --------------------------------------------------------------------------------------------

    def _arm(self, node_id: str, deadline: float) -> None:
        if node_id in self.timers:
            self.timers[node_id][1].cancel()
        scope = trio.CancelScope()
        self.timers[node_id] = deadline, scope
        self.cluster.start_soon(self._timer, node_id, deadline, scope)

    async def _timer(self, node_id: str, deadline: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(max(0.0, deadline - time.time()))
            try:
                await self.cluster.ref.cast(DrainDeadline(node_id, deadline))
            except ActorDied:  # the cluster is stopping; its next incarnation reads the deadline back
                pass

    async def _deadline_passed(self, node_id: str, deadline: float) -> None:
        """Cancel every job still on the node, unless the drain was undone or given another deadline since."""
        node = self.cluster.nodes.get(node_id)
        if node is None or drain_deadline(node.labels, self.cluster.settings.supervisor_id) != deadline:
            return
        jobs = await self.cluster.scheduler.call(NodeJobs(node_id))
        reason = f"worker {node.hostname} was drained and the job was still running when the drain's timeout passed"
        for job_id in jobs:
            ref = self.cluster.jobs_supervisor.whereis(job_id)
            if ref is not None:
                try:
                    await ref.cast(Cancel(reason))
                except ActorDied:  # it ended meanwhile
                    continue
            self.cancelled.setdefault(node_id, set()).add(job_id)
        if jobs:
            log.warning("cluster: drain of %s timed out: cancelling %d jobs there", node.hostname, len(jobs))


__all__ = ["ActivateWorker", "DrainDeadline", "DrainMessage", "DrainStatus", "DrainWorker", "Drains", "LABEL_DRAIN",
           "LABEL_DRAIN_BY", "LABEL_DRAIN_DEADLINE", "RemoveIfDrained", "WorkerChangeFailed", "drain_deadline",
           "node_inventory", "refuse_non_worker", "resolve_node"]
