"""The cluster page: the workers (state, address, labels, health probe, availability), each device with its honest
kind (a GPU, or what it is when it is not one), model, memory and a bar of its used share with the caller's jobs on
it, and the queue (its length and head). Its live part is a fragment that the page polls every 2 s (htmx).

A user sees the jobs they may see (an admin all): another user's share on a device is one anonymous "others"
segment, and a worker's SSH address is shown to admins only (as ``ListWorkers`` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from cumulus.dashboard.base import View
from cumulus.dashboard.render import page
from cumulus.devices import DeviceInfo, WorkerInfo
from cumulus.jobs import JobRecord, JobState

QUEUE_HEAD = 10
POLL_SECONDS = 2


def device_kind(device: DeviceInfo) -> str:
    """"GPU" only for a GPU; any other device says what it is, and that it is not one (e.g. the local cluster's
    PoCL CPU device)."""
    return "GPU" if device.is_gpu else f"{(device.kind or 'device').upper()} (not a GPU)"


@dataclass(frozen=True)
class Segment:
    share: float
    job_id: str = ""  # empty: jobs the caller may not see
    offset: float = 0.0


@dataclass
class DeviceView:
    worker: str
    device: DeviceInfo
    jobs: list[JobRecord] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return device_kind(self.device)

    def segments(self) -> list[Segment]:
        """The bar: each visible job's share, then what others hold (the device's used share is the truth)."""
        out: list[Segment] = []
        offset = 0.0
        for record in self.jobs:
            share = record.placement.share if record.placement else 0.0
            out.append(Segment(share, record.job_id, offset))
            offset += share
        others = round(self.device.used_share - offset, 6)
        if others > 0:
            out.append(Segment(others, "", offset))
        return out


@dataclass
class WorkerView:
    info: WorkerInfo
    devices: list[DeviceView]
    show_address: bool

    @property
    def address(self) -> str:
        return self.info.ssh_address if self.show_address else "(admins only)"

    @property
    def probe(self) -> str:
        """The outcome of the worker's last health probe (the scheduler keeps the outcome, not its time)."""
        if self.info.healthy:
            return "ok"
        return self.info.reason or self.info.state


def cluster_view(workers: list[WorkerInfo], live: list[JobRecord], *, admin: bool) -> dict[str, object]:
    """What the cluster page shows, from the workers and the caller's unfinished jobs."""
    on_device: dict[tuple[str, int], list[JobRecord]] = {}
    for record in live:
        placement = record.placement
        holds_none = record.state.terminal or record.state is JobState.PAUSED or record.queue_position > 0
        if placement is None or holds_none:
            continue
        for index in placement.device_indexes or (placement.device_index,):
            on_device.setdefault((placement.worker, index), []).append(record)
    views = [WorkerView(w, [DeviceView(w.hostname, d, on_device.get((w.hostname, d.index), []))
                            for d in w.devices], admin) for w in workers]
    queued = sorted((r for r in live if r.queue_position > 0 and not r.state.terminal),
                    key=lambda r: r.queue_position)
    return {"workers": views, "queue_length": len(queued), "queue_head": queued[:QUEUE_HEAD],
            "poll_seconds": POLL_SECONDS}


class ClusterPages(View):
    async def _view(self, request: Request) -> dict[str, object]:
        signed = self.sessions.require(request)
        workers = await self.api.list_workers()
        live = await self.api.list_jobs(include_finished=False, caller=signed.caller)
        return self.context(signed, "cluster", **cluster_view(workers, live, admin=signed.caller.admin))

    async def page(self, request: Request) -> Response:
        return page("cluster.html", await self._view(request))

    async def fragment(self, request: Request) -> Response:
        return page("cluster_live.html", await self._view(request))


__all__ = ["ClusterPages", "cluster_view", "device_kind"]
