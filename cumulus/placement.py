"""Placement policy: where a share of a device goes, as a pure function over a snapshot of the cluster.

No actors, no I/O, no clock: :func:`place` looks at :class:`NodeView` s (each node's devices and how much of each
is promised) and a :class:`Request`, and names the node and devices, or ``None`` when nothing fits now. The
Scheduler actor (``cumulus/actors/scheduler.py``) owns the state and applies the choice.

The policy:

* **Whole devices** (``gpu`` > 1): the node with the fewest unused eligible devices that still has enough
  (best fit), its lowest-numbered unused devices.
* **A share of one device**, packed: on a partly used device first, the one with the least room left that still
  fits, and only then on an unused one, so that whole devices stay free for jobs that need them. Among nodes, the
  busiest first (the one with most jobs), except that a node with ``busy_jobs`` or more jobs counts as busy and
  comes after the others: jobs start in parallel on several nodes instead of queueing behind one node's work.
* **Tiny shares** (below ``spread_below``) spread: the node with the fewest jobs first, packed on its devices.
  Such jobs use little of a device, so what limits them is each node's start-up work, not device room.
* **At most ``max_jobs_per_device`` jobs on a device** (``jobs.max_jobs_per_device``): a device holding that many
  is full whatever share of it is free (every job costs the device a context and memory of its own), and a device
  with any job on it is not free for a whole-device job.

Ties break on hostname, then device index, so a placement is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from cumulus.devices import DeviceInfo

EPSILON = 1e-9
SPREAD_BELOW = 0.1
BUSY_JOBS = 8
MAX_JOBS_PER_DEVICE = 16  # the default of jobs.max_jobs_per_device


@dataclass(frozen=True)
class DeviceLoad:
    """One device and what of it is promised."""

    info: DeviceInfo
    used: float = 0.0  # sum of the shares reserved on it
    jobs: int = 0  # reservations on it

    @property
    def free(self) -> float:
        return 1.0 - self.used

    @property
    def unused(self) -> bool:
        return self.used < EPSILON and self.jobs == 0


@dataclass(frozen=True)
class NodeView:
    node_id: str
    hostname: str
    devices: tuple[DeviceLoad, ...]
    jobs: int = 0  # reservations held on the node
    available: bool = True  # ready and connected: takes new jobs

    def eligible(self, allow_non_gpu: bool) -> list[DeviceLoad]:
        return [d for d in self.devices if d.info.is_gpu or allow_non_gpu]


@dataclass(frozen=True)
class Request:
    gpu: float  # a share 0 < gpu <= 1 of one device, or a whole number of devices > 1
    allow_non_gpu: bool = False

    @property
    def whole_devices(self) -> int:
        return int(self.gpu) if self.gpu > 1 else 0

    @property
    def share(self) -> float:
        return 1.0 if self.whole_devices else self.gpu


@dataclass(frozen=True)
class Choice:
    node_id: str
    hostname: str
    device_indexes: tuple[int, ...]
    share: float  # of each device


def can_ever_fit(nodes: Iterable[NodeView], request: Request) -> bool:
    """Whether some node (available or not) has enough eligible devices for ``request`` when idle."""
    needed = max(1, request.whole_devices)
    return any(len(node.eligible(request.allow_non_gpu)) >= needed for node in nodes)


def place(nodes: Sequence[NodeView], request: Request, *, spread_below: float = SPREAD_BELOW,
          busy_jobs: int = BUSY_JOBS, max_jobs_per_device: int = MAX_JOBS_PER_DEVICE) -> Choice | None:
    """Where ``request`` goes now, or ``None`` if no available node has room (see the module docstring)."""
    available = [node for node in nodes if node.available]
    if request.whole_devices:
        return _place_whole(available, request)
    share = request.share
    if share < spread_below:
        order = sorted(available, key=lambda n: (n.jobs, n.hostname))
    else:
        order = sorted(available, key=lambda n: (n.jobs >= busy_jobs, -n.jobs, n.hostname))
    for node in order:
        fitting = [d for d in node.eligible(request.allow_non_gpu)
                   if d.free + EPSILON >= share and d.jobs < max_jobs_per_device]
        if fitting:
            device = min(fitting, key=lambda d: (d.unused, d.free, d.info.index))
            return Choice(node.node_id, node.hostname, (device.info.index,), share)
    return None


def _place_whole(nodes: Sequence[NodeView], request: Request) -> Choice | None:
    best: tuple[int, str, NodeView, list[DeviceLoad]] | None = None
    for node in nodes:
        unused = sorted((d for d in node.eligible(request.allow_non_gpu) if d.unused), key=lambda d: d.info.index)
        if len(unused) >= request.whole_devices and (best is None or (len(unused), node.hostname) < best[:2]):
            best = (len(unused), node.hostname, node, unused)
    if best is None:
        return None
    node, unused = best[2], best[3]
    return Choice(node.node_id, node.hostname, tuple(d.info.index for d in unused[:request.whole_devices]), 1.0)


def fits_exactly(node: NodeView, device_indexes: Sequence[int], share: float) -> bool:
    """Whether ``share`` of each of ``device_indexes`` is free on ``node`` (re-adopting a job that holds them)."""
    by_index = {d.info.index: d for d in node.devices}
    return all(i in by_index and by_index[i].free + EPSILON >= share for i in device_indexes)


__all__ = ["BUSY_JOBS", "Choice", "DeviceLoad", "MAX_JOBS_PER_DEVICE", "NodeView", "Request", "SPREAD_BELOW",
           "can_ever_fit", "fits_exactly", "place"]
