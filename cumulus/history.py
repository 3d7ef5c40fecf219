"""A job's history: what happened to it and when, kept in the journal (``job_events``) for ``cumulus describe``.

Kinds: ``state`` (each state change, with its reason and attempt), ``placement`` (worker, devices, share),
``queue`` (queue position changes), ``retry`` (attempt N failed: why, backoff), ``teardown`` (released / leaked)
and ``message`` (the human progress messages a job emits, and restart recovery notes). Never log lines (the job's
output) and never env values: every text is scrubbed of the job's env and ``secret_env`` values and of URL
credentials (a requirement's ``https://user:token@host/...``, :mod:`cumulus.redaction`) before it is recorded.

Bounds: at most :data:`MAX_EVENTS_PER_JOB` events per job (the last of them says that later ones were not kept);
the job's end (its terminal state and teardown report) is always kept, in :data:`END_EVENTS_RESERVE` extra slots.
Queue position changes are coalesced (recorded only when the position changes) and at most
:data:`MAX_QUEUE_EVENTS` are kept per job life. So a pathological job cannot fill the disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cumulus.redaction import redact_credentials

MAX_EVENTS_PER_JOB = 200
END_EVENTS_RESERVE = 5
MAX_QUEUE_EVENTS = 20
MAX_TEXT_CHARS = 2000
MIN_SECRET_CHARS = 6  # env values at least this long are scrubbed from every recorded text
REDACTED = "[redacted]"
KINDS = ("state", "message", "placement", "queue", "retry", "service", "teardown")
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class HistoryEvent:
    """One entry of a job's history. ``text`` is one human line; ``data`` holds the kind's details:
    placement: worker, node_id, device_indexes, share; queue: position, previous; retry: failed_attempt,
    backoff_seconds; service (its Swarm service was created): service_id; teardown: released, leaked."""

    job_id: str
    at: float
    kind: str
    text: str
    attempt: int = 1
    state: str = ""
    reason: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_end(self) -> bool:
        """The job's terminal state or teardown report: always kept, whatever the bound."""
        return self.kind == "teardown" or (self.kind == "state" and self.state in TERMINAL_STATES)

    def payload(self) -> str:
        return json.dumps({"text": self.text, "attempt": self.attempt, "state": self.state, "reason": self.reason,
                           "data": dict(self.data)})

    @classmethod
    def from_row(cls, job_id: str, at: float, kind: str, payload: str) -> HistoryEvent:
        p = json.loads(payload)
        return cls(job_id, at, kind, p.get("text", ""), p.get("attempt", 1), p.get("state", ""),
                   p.get("reason", ""), p.get("data", {}))


def limit_reached(job_id: str, at: float, attempt: int) -> HistoryEvent:
    return HistoryEvent(job_id, at, "message", f"history limit reached ({MAX_EVENTS_PER_JOB} events): later events "
                        "are not kept, except the job's end", attempt)


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (a string, or lists/dicts of them) with every secret and every URL credential replaced and texts
    cut to MAX_TEXT_CHARS."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        value = redact_credentials(value)
        return value if len(value) <= MAX_TEXT_CHARS else value[:MAX_TEXT_CHARS] + "..."
    if isinstance(value, (list, tuple)):
        return [scrub(item, secrets) for item in value]
    if isinstance(value, Mapping):
        return {key: scrub(item, secrets) for key, item in value.items()}
    return value


def secrets_of(env: Mapping[str, str], secret_env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The values to scrub, longest first (so a value that contains another is replaced whole): ``env`` values of
    at least MIN_SECRET_CHARS (shorter ones are flags and numbers that texts are full of), and every non-empty
    ``secret_env`` value, whatever its length (it was declared secret: a garbled text beats a leaked value)."""
    values = {v for v in env.values() if len(v) >= MIN_SECRET_CHARS} | {v for v in (secret_env or {}).values() if v}
    return tuple(sorted(values, key=len, reverse=True))
