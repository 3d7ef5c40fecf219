"""The result envelope (``result.msgpack``): what the runner writes when a job ends, as bytes and keys.

A msgpack map with str keys (docs/job-format.md): ``format``, ``ok``, then ``value`` (cloudpickle bytes of the
return value) when ``ok``, else ``exc_type``, ``exc_message``, ``traceback``, ``exc_pickle``; ``duration_s``
always from the runner; unknown keys are kept. The runner (standalone) writes it with its own code;
:func:`encode_result` writes the same for tests and tools. :func:`decode_envelope` checks the shape and never
unpickles anything: turning the value back into Python objects is the SDK's job (:mod:`cumulus.client.results`).
msgpack is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cumulus.errors import RemoteError
from cumulus.jobformat.limits import FORMAT

ENVELOPE_KEYS = frozenset({"format", "ok", "value", "exc_type", "exc_message", "traceback", "exc_pickle",
                           "duration_s"})
INVALID_RESULT = "cumulus.InvalidResult"  # the exc_type of a RemoteError for an envelope that cannot be read


@dataclass(frozen=True)
class Envelope:
    """A checked envelope, nothing unpickled: ``value`` and ``exc_pickle`` are still cloudpickle bytes."""

    ok: bool
    value: bytes | None = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    exc_pickle: bytes | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def encode_result(ok: bool, *, value: bytes | None = None, exc_type: str = "", exc_message: str = "",
                  traceback: str = "", exc_pickle: bytes | None = None, **extra: Any) -> bytes:
    """The envelope as the runner writes it (the runner has its own copy; this one is for tests and tools)."""
    import msgpack

    env: dict[str, Any] = {"format": FORMAT, "ok": ok}
    if ok:
        env["value"] = value
    else:
        env.update(exc_type=exc_type, exc_message=exc_message, traceback=traceback, exc_pickle=exc_pickle)
    env.update(extra)
    packed: bytes = msgpack.packb(env, use_bin_type=True)
    return packed


def decode_envelope(data: bytes) -> Envelope:
    """Check and split the runner's envelope; raises :class:`RemoteError` (``cumulus.InvalidResult``) when it is
    not msgpack, not format 1, or says ok without value bytes."""
    import msgpack

    try:
        env = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - any decoding problem is the same problem for the caller
        raise RemoteError(INVALID_RESULT, f"result envelope is not valid msgpack: {exc}") from None
    if not isinstance(env, dict) or env.get("format") != FORMAT or not isinstance(env.get("ok"), bool):
        raise RemoteError(INVALID_RESULT, f"result envelope has an unknown shape or format "
                                          f"({env.get('format') if isinstance(env, dict) else env!r})")
    extra = {k: v for k, v in env.items() if k not in ENVELOPE_KEYS}
    duration = env.get("duration_s")
    duration_s = float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None
    if env["ok"]:
        raw = env.get("value")
        if not isinstance(raw, bytes):
            raise RemoteError(INVALID_RESULT, "result envelope says ok but has no value bytes")
        return Envelope(ok=True, value=raw, duration_s=duration_s, extra=extra)
    exc_pickle = env.get("exc_pickle")
    return Envelope(ok=False, exc_type=str(env.get("exc_type") or "builtins.Exception"),
                    exc_message=str(env.get("exc_message") or ""), traceback=str(env.get("traceback") or ""),
                    exc_pickle=exc_pickle if isinstance(exc_pickle, bytes) else None, duration_s=duration_s,
                    extra=extra)
