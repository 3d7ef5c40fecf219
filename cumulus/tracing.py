"""Trace ids: the W3C Trace Context ``traceparent`` header that ties a submission to everything done for it.

Owns parsing a ``traceparent`` (:func:`parse_traceparent`), making a new one (:func:`new_traceparent`) and a
child of a given one (:func:`child_traceparent`), and the gRPC metadata keys: :data:`TRACEPARENT_KEY` on a
submission, :data:`TRACE_ID_REPLY_KEY` on its reply. Standard library only: the SDK and the supervisor both use it.

The format (https://www.w3.org/TR/trace-context/#traceparent-header), version 00::

    00-<trace-id: 32 lower-case hex>-<parent-id: 16 lower-case hex>-<trace-flags: 2 lower-case hex>

An all-zero trace id or parent id is invalid, and so is version ``ff``. A version above 00 may carry more fields
after the flags (``-...``), which a version-00 parser ignores. The spec's rule for a receiver is that an invalid
``traceparent`` is ignored (a new trace starts) rather than failing the request: :func:`parse_traceparent`
returns ``None`` for it and never raises.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

TRACEPARENT_KEY = "traceparent"
"""The gRPC metadata key (lower case, as gRPC requires) that carries a W3C traceparent."""

TRACE_ID_REPLY_KEY = "cumulus-trace-id"
"""The initial-metadata key of a SubmitJob reply that says the trace id the job was recorded with (the one sent,
unless it was invalid or the idempotency key named an existing job)."""

TRACEPARENT_ENV = "CUMULUS_TRACEPARENT"
"""Environment variable the SDK reads a caller's traceparent from when a submission is given none."""

MAX_TRACEPARENT_LEN = 512  # far above any valid header; a longer value is ignored unread
SAMPLED = 0x01

_HEX = "0-9a-f"
_VERSION_00 = re.compile(rf"([{_HEX}]{{2}})-([{_HEX}]{{32}})-([{_HEX}]{{16}})-([{_HEX}]{{2}})")
_LATER_VERSION_TAIL = re.compile(r"(-.*)?", re.DOTALL)
_TRACE_ID = re.compile(rf"[{_HEX}]{{32}}")


@dataclass(frozen=True)
class TraceParent:
    """A parsed traceparent: ``trace_id`` (32 hex), ``parent_id`` (16 hex), ``flags`` (0..255)."""

    trace_id: str
    parent_id: str
    flags: int = SAMPLED

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        """The traceparent as sent (always version 00, the only one this writes)."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}"


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """The traceparent in ``value``, or ``None`` when there is none or it is not valid. Never raises.

    Accepts version 00 exactly, and a later version (01..fe) whose first four fields have version 00's shape, as
    the spec asks (what follows the flags is ignored). Upper-case hex, all-zero ids, version ``ff``, a field of
    the wrong length and anything else are invalid."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) > MAX_TRACEPARENT_LEN:
        return None
    value = value.strip(" \t")  # optional whitespace around a header value (RFC 9110)
    head = _VERSION_00.match(value)
    if head is None:
        return None
    version, trace_id, parent_id, flags = head.groups()
    rest = value[head.end():]
    if version == "ff":
        return None
    if version == "00" and rest:
        return None
    if version != "00" and not _LATER_VERSION_TAIL.fullmatch(rest):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def is_trace_id(value: str) -> bool:
    """True for a valid W3C trace id: 32 lower-case hex digits, not all zero."""
    return isinstance(value, str) and bool(_TRACE_ID.fullmatch(value)) and value != "0" * 32


def new_trace_id() -> str:
    """A random trace id (16 bytes from :mod:`secrets`; all-zero, invalid, is drawn again)."""
    while True:
        trace_id = secrets.token_hex(16)
        if trace_id != "0" * 32:
            return trace_id


def new_span_id() -> str:
    """A random parent (span) id (8 bytes; never all zero)."""
    while True:
        span_id = secrets.token_hex(8)
        if span_id != "0" * 16:
            return span_id


def new_traceparent() -> TraceParent:
    """A new trace: random trace id and span id, sampled."""
    return TraceParent(new_trace_id(), new_span_id(), SAMPLED)


def child_traceparent(parent: TraceParent) -> TraceParent:
    """The traceparent of a call made on behalf of ``parent``: the same trace and flags, a new span id (the W3C
    rule for a participant that calls onwards)."""
    return TraceParent(parent.trace_id, new_span_id(), parent.flags)


def trace_id_from(value: str | bytes | None) -> str:
    """The trace id of the traceparent in ``value`` when it is valid, else a new one (the receiver's rule)."""
    parsed = parse_traceparent(value)
    return parsed.trace_id if parsed is not None else new_trace_id()


__all__ = ["MAX_TRACEPARENT_LEN", "TRACEPARENT_ENV", "TRACEPARENT_KEY", "TRACE_ID_REPLY_KEY", "TraceParent",
           "child_traceparent", "is_trace_id", "new_span_id", "new_trace_id", "new_traceparent", "parse_traceparent",
           "trace_id_from"]
