"""A job's outcome on the client: the runner's result envelope turned back into the value or the original
exception, with the job's traceback attached as ``__cause__``.

The envelope's bytes and keys are the job format's (:mod:`cumulus.jobformat.envelope`); what is here is the part
only a client does: unpickling the value or the exception (never in the supervisor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import cloudpickle

from cumulus.errors import RemoteError
from cumulus.jobformat.envelope import decode_envelope, encode_result

__all__ = ["Outcome", "RemoteTraceback", "decode_result", "encode_result", "raise_remote", "remote_exception"]


class RemoteTraceback(Exception):
    """Carries the job's traceback text; set as ``__cause__`` of a re-raised remote exception."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


@dataclass(frozen=True)
class Outcome:
    """A decoded result envelope. ``value`` is the unpickled return value when ``ok``."""

    ok: bool
    value: Any = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    exc_pickle: bytes | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> Any:
        """The return value, or the remote exception re-raised (see :func:`raise_remote`)."""
        if self.ok:
            return self.value
        raise_remote(self)


def decode_result(envelope: bytes) -> Outcome:
    """Decode the runner's envelope and unpickle the value (client side only - never in the supervisor).

    Raises :class:`RemoteError` (``cumulus.InvalidResult``) on a malformed envelope.
    """
    env = decode_envelope(envelope)
    if env.ok:
        return Outcome(ok=True, value=cloudpickle.loads(env.value), duration_s=env.duration_s, extra=env.extra)
    return Outcome(ok=False, exc_type=env.exc_type, exc_message=env.exc_message, traceback=env.traceback,
                   exc_pickle=env.exc_pickle, duration_s=env.duration_s, extra=env.extra)


def remote_exception(outcome: Outcome) -> BaseException:
    """The exception a failed outcome stands for: the original one when it can be unpickled here, else
    :class:`RemoteError`; either way with ``__cause__`` = :class:`RemoteTraceback` (the job's traceback)."""
    exc: BaseException | None = None
    if outcome.exc_pickle:
        try:
            loaded = cloudpickle.loads(outcome.exc_pickle)
            if isinstance(loaded, BaseException):
                exc = loaded
        except Exception:  # noqa: BLE001 - type not importable here, or not unpicklable: fall back
            exc = None
    if exc is None:
        exc = RemoteError(outcome.exc_type, outcome.exc_message, outcome.traceback)
    exc.__cause__ = RemoteTraceback(outcome.traceback or f"{outcome.exc_type}: {outcome.exc_message}")
    return exc


def raise_remote(outcome: Outcome) -> NoReturn:
    """Re-raise a failed job's exception (see :func:`remote_exception`)."""
    if outcome.ok:
        raise ValueError("raise_remote called with a successful outcome")
    raise remote_exception(outcome)
