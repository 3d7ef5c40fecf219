"""How a job's record is stored in a journal row, and how secret values are kept out of the journal in clear.

:func:`row_of` turns a :class:`~cumulus.jobs.JobRecord` into a row, :func:`record_of` a row back into a record.
A job's ``secret_env`` is one column of its own, ``secret_env``, that holds a :class:`SecretBox` ciphertext (Fernet:
AES-128-CBC with HMAC-SHA256) and never plain text: the row carries the values in clear only in memory, on their way
to :class:`~cumulus.journal.JournalStore`, which seals them before writing and opens them after reading.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from cumulus.calls import CallStats
from cumulus.errors import ConfigError
from cumulus.identity import Limits
from cumulus.jobs import JobRecord, JobSpec, JobState, Placement, TeardownReport


class SecretBox:
    """Encrypts and decrypts small secret mappings with one key (Fernet). ``key`` is a urlsafe-base64 32-byte key.

    :meth:`open` raises :class:`ConfigError` when a value was sealed with another key (the key file changed)."""

    def __init__(self, key: bytes) -> None:
        from cryptography.fernet import Fernet  # server side only: the client never needs it

        self._fernet = Fernet(key)

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A box with a fresh key that lives in memory only (an in-memory journal)."""
        from cryptography.fernet import Fernet

        return cls(Fernet.generate_key())

    @classmethod
    def from_key_file(cls, path: str | os.PathLike[str]) -> SecretBox:
        """The box whose key is in ``path``; the file is created (mode 0600, its directory 0700) when missing."""
        from cryptography.fernet import Fernet

        file = Path(path).expanduser()
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key())
        try:
            return cls(file.read_bytes().strip())
        except (OSError, ValueError) as error:
            raise ConfigError("security.secret_key_file", f"{file}: not a usable key ({error})") from None

    def seal(self, values: Mapping[str, str]) -> bytes | None:
        return self._fernet.encrypt(json.dumps(dict(values)).encode()) if values else None

    def open(self, sealed: bytes | None) -> dict[str, str]:
        from cryptography.fernet import InvalidToken

        if not sealed:
            return {}
        try:
            return dict(json.loads(self._fernet.decrypt(sealed)))
        except InvalidToken:
            raise ConfigError("security.secret_key_file",
                              "the journal's secret env values were sealed with another key") from None


def row_of(record: JobRecord, *, with_package: bool) -> dict[str, Any]:
    """The record as a row. ``with_package``: the whole row of a new job (spec and package included); otherwise
    only what changes during a job's life (a spec never does). ``secret_env`` is still clear text here: the store
    seals it."""
    spec = record.spec
    row: dict[str, Any] = {
        "job_id": record.job_id,
        "state": record.state.value, "reason": record.reason, "attempt": record.attempt,
        "placement": json.dumps(record.placement.__dict__) if record.placement else None,
        "partition_id": record.partition_id, "service_id": record.service_id, "result": record.result,
        "teardown": None if record.teardown is None else json.dumps(
            {"released": record.teardown.released, "leaked": record.teardown.leaked}),
        "submitted_at": record.submitted_at, "started_at": record.started_at, "finished_at": record.finished_at,
        "running_at": record.running_at, "ran_seconds": record.ran_seconds,
        "calls": json.dumps(record.calls.to_row()) if record.spec.instance else None,
    }
    if with_package:
        row.update({
            "idempotency_key": spec.idempotency_key, "name": spec.name, "package": spec.package,
            "owner": spec.owner, "secret_env": dict(spec.secret_env),
            "spec": json.dumps({"gpu": spec.gpu, "duration": spec.duration, "requirements": list(spec.requirements),
                                "env": spec.env, "retries": spec.retries, "retry_exceptions": spec.retry_exceptions,
                                "priority": spec.priority, "max_queue_seconds": spec.max_queue_seconds,
                                "memory_bytes": spec.memory_bytes, "cpus": spec.cpus, "network": spec.network,
                                "limits": asdict(spec.limits), "trace_id": spec.trace_id,
                                "python": spec.python, "image": spec.image, "index_url": spec.index_url,
                                "resume_on_timeout": spec.resume_on_timeout, "instance": spec.instance,
                                "max_restarts": spec.max_restarts}),
        })
    return row


def record_of(row: Mapping[str, Any]) -> JobRecord:
    """Rebuild a record from its row (``secret_env`` already opened by the store); an ended job's record comes
    back ended (finished and torn down), without its package (``row["package"]`` still has it)."""
    meta = json.loads(row["spec"])
    ended = JobState(row["state"]).terminal  # an ended job runs no more: its package stays in the journal only
    spec = JobSpec(package=b"" if ended else row["package"], gpu=meta["gpu"], duration=meta["duration"],
                   requirements=tuple(meta["requirements"]), env=meta["env"], name=row["name"],
                   idempotency_key=row["idempotency_key"] or "", retries=meta["retries"],
                   retry_exceptions=meta["retry_exceptions"], priority=meta["priority"],
                   max_queue_seconds=meta["max_queue_seconds"], memory_bytes=meta.get("memory_bytes", 0),
                   cpus=meta.get("cpus", 0.0), network=meta.get("network", ""),
                   secret_env=dict(row.get("secret_env") or {}), owner=row.get("owner") or "",
                   limits=Limits(**meta.get("limits", {})), trace_id=meta.get("trace_id", ""),
                   python=meta.get("python", ""), image=meta.get("image", ""),
                   index_url=meta.get("index_url", ""), resume_on_timeout=meta.get("resume_on_timeout", False),
                   instance=meta.get("instance", False), max_restarts=meta.get("max_restarts", 0))
    record = JobRecord(row["job_id"], spec)
    record.state = JobState(row["state"])
    record.reason = row["reason"]
    record.attempt = row["attempt"]
    record.placement = Placement(**json.loads(row["placement"])) if row["placement"] else None
    if record.placement:
        record.placement = Placement(**{**record.placement.__dict__,
                                        "device_indexes": tuple(record.placement.device_indexes),
                                        "gpu_uuids": tuple(record.placement.gpu_uuids)})
    record.partition_id, record.service_id, record.result = row["partition_id"], row["service_id"], row["result"]
    record.submitted_at, record.started_at, record.finished_at = (
        row["submitted_at"], row["started_at"], row["finished_at"])
    # A journal from before ``running_at``: the first attempt's RUNNING is the job's start.
    record.running_at = row.get("running_at") or (row["started_at"] if row["attempt"] == 1 else None)
    record.ran_seconds = row.get("ran_seconds") or 0.0
    record.calls = CallStats.from_row(json.loads(row["calls"]) if row.get("calls") else None)
    record.announce()
    if record.state.terminal:
        record.finished.set()
        teardown = json.loads(row["teardown"]) if row["teardown"] else {"released": [], "leaked": []}
        record.set_torn_down(TeardownReport(tuple(teardown["released"]), tuple(teardown["leaked"])))
    return record


__all__ = ["SecretBox", "record_of", "row_of"]
