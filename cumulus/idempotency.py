"""Idempotency keys: what identifies a job request, so that a repeated request is told apart from a reused key.

A key belongs to its user: (owner, key) names at most one job (the cluster actor keeps the map, the journal a
unique index). A request that comes again with the same key is the same job only if it asks for the same thing:
the same package bytes and the same value of every :class:`~cumulus.jobs.JobSpec` field that defines the job (all
of them but ``owner``, ``idempotency_key``, ``limits`` and ``trace_id``). :class:`RequestFingerprint` holds a
SHA-256 digest of each, so neither the package nor any env value (``secret_env`` included) needs to be kept or
compared in clear; the cluster computes it from the stored package and spec after a restart, so the comparison
holds across restarts.

Pure logic, no I/O: hashing a large package takes a moment, so callers on the event loop run
:meth:`RequestFingerprint.of` in a thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cumulus.errors import AlreadyExists
from cumulus.jobs import JobSpec

#: Fields that do not define the job: who asked, the key itself, and the submission's trace id (a client that
#: sends the same request again, with a new traceparent, gets the job it made the first time).
NOT_COMPARED = frozenset({"owner", "idempotency_key", "limits", "trace_id"})


def _digest(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(value).hexdigest()
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class RequestFingerprint:
    """One SHA-256 digest per field that defines a job request, in the field order of JobSpec."""

    digests: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, spec: JobSpec) -> RequestFingerprint:
        return cls(tuple((f.name, _digest(getattr(spec, f.name))) for f in dataclasses.fields(spec)
                         if f.name not in NOT_COMPARED))

    def differences(self, other: RequestFingerprint) -> list[str]:
        """The names of the fields whose values differ (a field only one side has counts as different)."""
        mine, theirs = dict(self.digests), dict(other.digests)
        return [name for name in dict.fromkeys([*mine, *theirs]) if mine.get(name) != theirs.get(name)]


def check_same_request(key: str, job_id: str, existing: RequestFingerprint, new: RequestFingerprint) -> None:
    """Raise :class:`AlreadyExists` (gRPC ``ALREADY_EXISTS``) if ``new`` asks for something else than the job
    ``job_id`` that key ``key`` already names; the message names the differing fields (never their values)."""
    different = existing.differences(new)
    if different:
        raise AlreadyExists(f"idempotency key {key!r} was used for a different job {job_id} "
                            f"(different {', '.join(different)}); use a new key")


__all__ = ["NOT_COMPARED", "RequestFingerprint", "check_same_request"]
