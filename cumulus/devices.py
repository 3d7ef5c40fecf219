"""What the cluster says about its workers and their devices, as plain types (the RPC layer converts them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    kind: str  # "gpu", "cpu", ...
    is_gpu: bool
    memory_bytes: int
    uuid: str | None
    used_share: float = 0.0

    @property
    def free_share(self) -> float:
        return max(0.0, round(1.0 - self.used_share, 6))


@dataclass(frozen=True)
class WorkerInfo:
    node_id: str
    hostname: str
    ssh_address: str
    state: str  # "ready", "down", "unreachable", "preparing" (connected; its worker image is being pulled)
    healthy: bool
    devices: tuple[DeviceInfo, ...] = ()
    running_jobs: int = 0
    reason: str = ""
    availability: str = "active"  # "active", "draining", "drained" (cumulus worker drain / activate)
    labels: tuple[tuple[str, str], ...] = ()  # the node's ``cumulus.label.<key>`` labels, keys unprefixed


__all__ = ["DeviceInfo", "WorkerInfo"]
