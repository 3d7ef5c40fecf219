"""WorkerActor: one per Swarm worker node. Owns the node's SSH connection, device inventory and share accounting.

Share accounting is the supervisor's own: Chronos keeps partitions inside the process that made them, so nothing
on the worker can tell how much of a device is promised. A reservation is a share ``0 < g <= 1`` of one device,
or ``n`` whole devices (1..8). Fractional requests go to the partly used device with the least room that still
fits (packing), and only then to an unused one.

The connection is kept in a background task that reconnects with backoff; while it is down (or the node is not
Ready) the worker is unhealthy and refuses reservations. Once connected, the actor reaps orphans on its node:
partition holders and job directories of this supervisor that no live job owns.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from cumulus.actors.base import Actor
from cumulus.actors.ownership import Leak
from cumulus.backends import Backends, NodeBackend
from cumulus.config import Settings
from cumulus.errors import CapacityExhausted, RequestRejected, Unsatisfiable
from cumulus.jobs import DeviceInfo, JobSpec, WorkerInfo
from cumulus.resources.swarm import NodeInfo

log = logging.getLogger(__name__)

EPSILON = 1e-9
HEALTH_PROBE_SECONDS = 5.0
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


# ---- messages -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reserve:
    job_id: str
    spec: JobSpec
    allow_non_gpu: bool
    devices: tuple[int, ...] = ()  # re-adoption: exactly these devices (what the job already holds)


@dataclass(frozen=True)
class Release:
    job_id: str


@dataclass(frozen=True)
class NodeUpdate:
    node: NodeInfo


@dataclass(frozen=True)
class GetInfo:
    pass


@dataclass(frozen=True)
class CanEverFit:
    spec: JobSpec
    allow_non_gpu: bool


@dataclass(frozen=True)
class Allocation:
    """What a reservation got: devices (indexes), the share of each, and the backend to reach the node."""

    worker: str
    node_id: str
    device_indexes: tuple[int, ...]
    share: float
    gpu_uuids: tuple[str | None, ...]
    backend: NodeBackend
    worker_ref: Any = None  # the WorkerActor that holds the reservation (release it there)


class WorkerUnavailable(RequestRejected):
    """The worker is not healthy (node not Ready, or SSH down) and takes no new jobs now."""


# ---- the actor ----------------------------------------------------------------------------------------------------
@dataclass
class _Device:
    info: DeviceInfo
    used: dict[str, float] = field(default_factory=dict)  # job id -> share

    @property
    def used_share(self) -> float:
        return sum(self.used.values())

    @property
    def free(self) -> float:
        return 1.0 - self.used_share


def parse_devices(labels: dict[str, str]) -> list[DeviceInfo]:
    """The device inventory from a node's ``cumulus.devices`` label (written by setup-worker.sh)."""
    try:
        raw = json.loads(labels.get("cumulus.devices", "[]"))
    except ValueError:
        return []
    devices = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            devices.append(DeviceInfo(
                index=int(entry["index"]), name=str(entry.get("name", "")), kind=str(entry.get("kind", "")),
                is_gpu=bool(entry.get("is_gpu", False)), memory_bytes=int(entry.get("memory_bytes") or 0),
                uuid=entry.get("uuid"),
            ))
        except (KeyError, TypeError, ValueError):
            continue
    return devices


class WorkerActor(Actor):
    mailbox_size = 256

    def __init__(
        self,
        node: NodeInfo,
        settings: Settings,
        backends: Backends,
        *,
        is_live_job: Callable[[str], bool],
        job_prefix: str,
    ) -> None:
        super().__init__(f"worker:{node.hostname}")
        self.node = node
        self.settings = settings
        self.backends = backends
        self.is_live_job = is_live_job
        self.job_prefix = job_prefix
        self.devices = {d.index: _Device(d) for d in parse_devices(node.labels)}
        self.backend: NodeBackend | None = None
        self.reason = "connecting"
        self.reaped: list[str] = []

    @property
    def healthy(self) -> bool:
        return self.node.ready and self.backend is not None

    async def on_start(self) -> None:
        self.start_soon(self._keep_connected)

    async def handle(self, message: Any) -> Any:
        match message:
            case Reserve(job_id, spec, allow_non_gpu, devices):
                return self._reserve(job_id, spec, allow_non_gpu, devices)
            case Release(job_id):
                for device in self.devices.values():
                    device.used.pop(job_id, None)
                return None
            case NodeUpdate(node):
                self.node = node
                return None
            case CanEverFit(spec, allow_non_gpu):
                return self._can_ever_fit(spec, allow_non_gpu)
            case GetInfo():
                return self.info()
        raise TypeError(f"{self.name}: unknown message {message!r}")

    def info(self) -> WorkerInfo:
        if not self.node.ready:
            state, reason = "down", f"node is {self.node.state}/{self.node.availability}"
        elif self.backend is None:
            state, reason = "unreachable", self.reason
        else:
            state, reason = "ready", ""
        jobs = {job for device in self.devices.values() for job in device.used}
        return WorkerInfo(
            node_id=self.node.id, hostname=self.node.hostname,
            ssh_address=self.node.labels.get("cumulus.ssh", ""), state=state, healthy=self.healthy,
            devices=tuple(
                DeviceInfo(**{**d.info.__dict__, "used_share": round(d.used_share, 6)})
                for d in sorted(self.devices.values(), key=lambda d: d.info.index)
            ),
            running_jobs=len(jobs), reason=reason,
        )

    # ---- share accounting -------------------------------------------------------------------------------------

    def _eligible(self, allow_non_gpu: bool) -> list[_Device]:
        return [d for d in self.devices.values() if d.info.is_gpu or allow_non_gpu]

    def _can_ever_fit(self, spec: JobSpec, allow_non_gpu: bool) -> bool:
        return len(self._eligible(allow_non_gpu)) >= max(1, spec.whole_devices)

    def _reserve(self, job_id: str, spec: JobSpec, allow_non_gpu: bool, devices: tuple[int, ...] = ()) -> Allocation:
        if not self._can_ever_fit(spec, allow_non_gpu):
            kinds = "devices" if allow_non_gpu else "GPUs"
            raise Unsatisfiable(f"{self.node.hostname} has {len(self._eligible(allow_non_gpu))} {kinds}; "
                                f"gpu={spec.gpu:g} cannot fit")
        if not self.healthy or self.backend is None:
            raise WorkerUnavailable(f"{self.node.hostname} is not available: {self.info().reason}")
        for device in self.devices.values():
            if job_id in device.used:
                raise RequestRejected(f"job {job_id} already holds a reservation on {self.node.hostname}")
        eligible = self._eligible(allow_non_gpu)
        if devices:  # re-adopting a running job: account for exactly what it holds
            share = 1.0 if spec.whole_devices else spec.gpu
            chosen = [self.devices[i] for i in devices if i in self.devices]
            if len(chosen) != len(devices) or any(d.free + EPSILON < share for d in chosen):
                raise CapacityExhausted(f"{self.node.hostname}: devices {devices} cannot take {share:g} again")
        elif spec.whole_devices:
            free = sorted((d for d in eligible if d.used_share < EPSILON), key=lambda d: d.info.index)
            if len(free) < spec.whole_devices:
                raise CapacityExhausted(f"{self.node.hostname}: {len(free)} whole devices free, "
                                        f"{spec.whole_devices} asked")
            chosen, share = free[: spec.whole_devices], 1.0
        else:
            share = spec.gpu
            fitting = [d for d in eligible if d.free + EPSILON >= share]
            if not fitting:
                raise CapacityExhausted(f"{self.node.hostname}: no device has {share:g} free")
            # Pack: partly used devices first, the one with the least room left; then unused ones by index.
            chosen = [min(fitting, key=lambda d: (d.used_share < EPSILON, d.free, d.info.index))]
        for device in chosen:
            device.used[job_id] = share
        return Allocation(
            worker=self.node.hostname, node_id=self.node.id,
            device_indexes=tuple(d.info.index for d in chosen), share=share,
            gpu_uuids=tuple(d.info.uuid if d.info.is_gpu else None for d in chosen), backend=self.backend,
            worker_ref=self.ref,
        )

    # ---- connection and orphans -------------------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        attempt = 0
        while True:
            try:
                async with self.backends.connect_node(self.node, self.settings) as backend:
                    attempt = 0
                    await self._reap_orphans(backend)
                    self.backend, self.reason = backend, ""
                    log.info("%s: connected (%s)", self.name, backend.label)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._renew_leases, backend)
                        while await backend.is_alive():
                            await trio.sleep(HEALTH_PROBE_SECONDS)
                        nursery.cancel_scope.cancel()
                    self.reason = "SSH health probe failed"
                    # Now, not after closing the connection (which can take its timeout on a cut network):
                    # no new reservations here, and the jobs held through it stop (node_lost).
                    self.backend = None
                    backend.fail_leases(f"connection lost to {self.node.hostname}: {self.reason}")
            except Exception as error:  # a failed connection is a state of the node, not a crash of this actor
                self.reason = f"SSH: {error}"
                log.warning("%s: %s", self.name, self.reason)
            finally:
                if self.backend is not None:
                    # Nothing held through this connection can be renewed or released any more: its jobs
                    # stop now (node_lost) instead of waiting for a connection that may never return.
                    self.backend.fail_leases(f"connection lost to {self.node.hostname}: {self.reason}")
                self.backend = None
            await trio.sleep(RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)])
            attempt += 1

    async def _renew_leases(self, backend: NodeBackend) -> None:
        """Renew the partition leases of every job on this node, one SSH command per interval."""
        while True:
            try:
                await backend.renew_leases()
            except Exception as error:  # one missed renewal is survivable (ttl >= 2 intervals); log it
                log.warning("%s: renewing leases failed: %s", self.name, error)
            await trio.sleep(self.settings.lease.renew_interval)

    async def _reap_orphans(self, backend: NodeBackend) -> None:
        """Stop holders and remove job dirs of this supervisor's jobs that no live job owns.

        A reaping step that fails is logged and recorded in ``self.owner.leaks``; it never keeps the worker from
        serving (the orphan is tried again on the next connection).
        """
        orphans = await backend.find_orphans(self.job_prefix)
        def ours(job: str) -> bool:
            # Any live job of this supervisor: also one re-adopted or retried elsewhere, because on hosts that
            # share a filesystem or process table (the local cluster) this node sees other nodes' holders too.
            return self.is_live_job(job)

        steps = [(f"holder:{job}", backend.kill_holder, pid)
                 for job, pids in orphans.holders.items() if not ours(job) for pid in pids]
        steps += [(f"dir:{job}", backend.remove_job_dir, job)
                  for job in orphans.job_dirs if not ours(job)]
        for what, step, arg in steps:
            try:
                await step(arg)
                self.reaped.append(what)
            except Exception as error:  # recorded as a leak; retried on the next connection
                log.error("%s: reaping %s failed: %s", self.name, what, error)
                self.owner.leaks.append(Leak(self.name, what, f"reap failed: {error}", time.time()))
        try:
            stale = await backend.reap_stale_locks()
            if stale:
                self.reaped.append(f"{stale} stale chronos lock file(s)")
        except Exception as error:  # cosmetic for Chronos (it never reads them back); logged, retried next time
            log.warning("%s: removing stale chronos lock files failed: %s", self.name, error)
        if self.reaped:
            log.warning("%s: reaped orphans %s", self.name, ", ".join(self.reaped))


__all__ = ["Allocation", "CanEverFit", "GetInfo", "NodeUpdate", "Release", "Reserve", "WorkerActor",
           "WorkerUnavailable"]
