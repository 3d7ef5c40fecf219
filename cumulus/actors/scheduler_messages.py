"""The messages of the :class:`~cumulus.actors.scheduler.Scheduler` (what jobs, workers and the cluster send it, and
what it answers and tells queued jobs). Immutable data only; re-exported by :mod:`cumulus.actors.scheduler`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cumulus.actors.base import ActorRef
from cumulus.devices import DeviceInfo
from cumulus.jobs import JobSpec, Placement


@dataclass(frozen=True)
class NodeInventory:
    """A worker node as the Swarm describes it (from the cluster's node sync)."""

    node_id: str
    hostname: str
    ssh_address: str
    devices: tuple[DeviceInfo, ...]
    ready: bool
    status: str = ""  # "<state>/<availability>" when not ready
    draining: bool = False  # `cumulus worker drain`: takes no new job (:mod:`cumulus.actors.drain`)
    labels: tuple[tuple[str, str], ...] = ()  # the node's own labels (``cumulus.label.<key>``), keys unprefixed


@dataclass(frozen=True)
class NodesChanged:
    """Cast by the cluster: the worker nodes now (nodes not listed have left)."""

    nodes: tuple[NodeInventory, ...]


@dataclass(frozen=True)
class WorkerHealth:
    """Cast by a WorkerActor when its connection to the node comes or goes."""

    node_id: str
    connected: bool
    reason: str = ""
    takes_jobs: bool = True
    """False while connected but not ready for new jobs (its worker image is being pulled): no new job is placed
    there, and its running jobs are followed and re-adopted as on any connected node."""


@dataclass(frozen=True)
class ExpectAdoptions:
    """Cast by the cluster before it starts re-adopted jobs: job id -> node id."""

    job_nodes: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Admit:
    """Call: could the cluster ever run ``spec``, and is there room in the queue? Raises Unsatisfiable or
    CapacityExhausted; answers None."""

    spec: JobSpec


@dataclass(frozen=True)
class Reserve:
    """Call from a job: a share for it (a Reservation), or a place in the queue (Queued).

    ``ticket`` names this request in the Granted and QueuePosition messages sent to ``notify`` later.
    ``exact``: re-adoption, reserve exactly this placement (WorkerUnavailable while its node is not connected).
    """

    job_id: str
    spec: JobSpec
    ticket: int
    notify: ActorRef | None = None
    exact: Placement | None = None


@dataclass(frozen=True)
class Release:
    """Cast from a job: it holds nothing and waits for nothing any more (idempotent)."""

    job_id: str


@dataclass(frozen=True)
class ListWorkers:
    """Call: every known worker as a WorkerInfo, sorted by hostname."""


@dataclass(frozen=True)
class NodeJobs:
    """Call: the ids of the jobs that hold a reservation on the node, or are being re-adopted there (a tuple)."""

    node_id: str


class Availability(enum.Enum):
    """Whether a worker takes new jobs (``cumulus worker drain`` / ``activate``)."""

    ACTIVE = "active"
    DRAINING = "draining"  # takes no new job; some still run there
    DRAINED = "drained"  # takes no new job; none runs there


@dataclass(frozen=True)
class Reservation:
    job_id: str
    worker: str  # hostname
    node_id: str
    device_indexes: tuple[int, ...]
    share: float
    gpu_uuids: tuple[str | None, ...]
    device_model: str = ""  # the first device's name and kind: what the job's usage is priced and counted as
    is_gpu: bool = False

    def placement(self) -> Placement:
        return Placement(worker=self.worker, node_id=self.node_id, device_index=self.device_indexes[0],
                         share=self.share, device_indexes=self.device_indexes, gpu_uuids=self.gpu_uuids,
                         device_model=self.device_model, is_gpu=self.is_gpu)


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Granted:
    """To a queued job: its reservation."""

    ticket: int
    reservation: Reservation


@dataclass(frozen=True)
class QueuePosition:
    """To a queued job: its place in the queue changed."""

    ticket: int
    position: int


__all__ = ["Admit", "Availability", "ExpectAdoptions", "Granted", "ListWorkers", "NodeInventory", "NodeJobs",
           "NodesChanged", "QueuePosition", "Queued", "Release", "Reservation", "Reserve", "WorkerHealth"]
