"""Method calls on class instances: the values that travel between the RPC layer and the instance's JobActor.

A class instance is a job (``JobSpec.instance``) whose container constructs the instance and then serves method
calls on a Unix socket in its output directory (``worker_image/image/runner_instance.py`` documents that
protocol). A call is sent with :class:`MethodCall` and ends, exactly once, with a :class:`CallReply` whose
:class:`CallEnd` says how. The supervisor never unpickles ``args`` nor the reply's ``envelope``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cumulus.errors import CumulusError


class CallEnd(enum.Enum):
    """How a method call ended (``cumulus.v1.CallEnd``)."""

    RETURNED = "returned"  # the method ran: the envelope holds its value or its exception
    INSTANCE_DIED = "instance_died"  # the instance ended (or was lost) before the call returned
    CANCELLED = "cancelled"  # withdrawn by its caller first
    REFUSED = "refused"  # never sent to the instance: the reply's ``error`` says why


@dataclass(frozen=True, slots=True)
class CallKey:
    """Names one call in the supervisor: the caller's stream and the call id the client chose on it."""

    stream: int
    call_id: int


@dataclass(frozen=True, slots=True)
class MethodCall:
    """A call of ``method`` with cloudpickled ``(args, kwargs)`` on the instance ``job_id``."""

    job_id: str
    method: str
    args: bytes
    key: CallKey


@dataclass(frozen=True, slots=True)
class CancelCall:
    """Withdraw the call ``key`` of the instance ``job_id``: it ends CANCELLED unless it has ended."""

    job_id: str
    key: CallKey


@dataclass(frozen=True, slots=True)
class CallReply:
    """How a call ended: ``envelope`` (RETURNED), else ``message``; ``error`` for REFUSED (its gRPC status)."""

    end: CallEnd
    envelope: bytes = b""
    message: str = ""
    error: CumulusError | None = None

    @classmethod
    def refused(cls, error: CumulusError) -> CallReply:
        return cls(CallEnd.REFUSED, message=str(error), error=error)

    @classmethod
    def died(cls, why: str) -> CallReply:
        return cls(CallEnd.INSTANCE_DIED, message=why)


@dataclass
class MethodStats:
    calls: int = 0
    failed: int = 0
    seconds: float = 0.0


class CallStats:
    """An instance's calls that returned, per method (written by its JobActor only; read by anyone)."""

    __slots__ = ("calls", "failed", "methods")

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.methods: dict[str, MethodStats] = {}

    def count(self, method: str, *, failed: bool, seconds: float) -> None:
        stats = self.methods.setdefault(method, MethodStats())
        stats.calls += 1
        stats.seconds += seconds
        self.calls += 1
        if failed:
            stats.failed += 1
            self.failed += 1

    def to_row(self) -> dict[str, list[float]]:
        """For the journal: ``{method: [calls, failed, seconds]}``."""
        return {name: [m.calls, m.failed, round(m.seconds, 6)] for name, m in self.methods.items()}

    @classmethod
    def from_row(cls, row: dict[str, list[float]] | None) -> CallStats:
        stats = cls()
        for name, (calls, failed, seconds) in (row or {}).items():
            stats.methods[name] = MethodStats(int(calls), int(failed), float(seconds))
            stats.calls += int(calls)
            stats.failed += int(failed)
        return stats


def check_method_name(method: str) -> str | None:
    """Why ``method`` cannot be called on an instance (None when it may): only public names are served."""
    if not method or not method.isidentifier():
        return f"{method!r} is not a method name"
    if method.startswith("_"):
        return f"{method!r} is private: only public methods (not starting with '_') can be called remotely"
    return None


__all__ = ["CallEnd", "CallKey", "CallReply", "CancelCall", "CallStats", "MethodCall", "MethodStats", "check_method_name"]
