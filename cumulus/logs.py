"""The supervisor's log setup, and the job fields every log line about a job carries.

Owns :func:`configure_logging` (``logging.level`` and ``logging.format``: ``text``, one human line per record, or
``json``, one JSON object per line for a log pipeline), the JSON formatter (:class:`JsonLogFormatter`, built on
python-json-logger), and how a record learns which job it is about:

* inside a job's actor - its own task and every task it starts, which inherit the task's context - from
  :func:`bind_job`, which the job's actor calls at the very start of its life with its
  :class:`~cumulus.jobs.JobRecord`. The binding holds the record itself, so the attempt number and the worker are
  read when a line is logged: the job's actor stays their only writer, and nothing has to be re-bound on a retry
  or a placement;
* anywhere else (the cluster, the journal), from ``extra=job_log_fields(record)`` on the log call.

:class:`JobContextFilter`, installed on the handlers, copies the fields onto each record; an explicit ``extra``
wins. The fields are ``job_id``, ``attempt``, ``worker``, ``user`` and ``trace_id``, each only when known. Only
those are taken from a job: never its spec's env, secret env or package.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cumulus.jobs import JobRecord

JOB_FIELDS = ("job_id", "attempt", "worker", "user", "trace_id")
"""The job fields of a log line, in the order a JSON line lists them."""
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Libraries that narrate every step at INFO (asyncssh: each SSH channel opened and closed, thousands of lines a
#: minute under load): at INFO they say only warnings and errors; at DEBUG, everything.
CHATTY_LIBRARIES = ("asyncssh", "asyncssh.sftp")

_current_job: contextvars.ContextVar[JobRecord | None] = contextvars.ContextVar("cumulus_log_job", default=None)


# ---- which job a line is about -----------------------------------------------------------------------------------


def bind_job(record: JobRecord) -> contextvars.Token[JobRecord | None]:
    """Make every log line of the current task, and of the tasks and threads it starts from now on, carry
    ``record``'s job fields. Called by the job's actor in its own task, first thing (its task ends with the
    job, so the binding is never undone; the token is for tests)."""
    return _current_job.set(record)


def unbind_job(token: contextvars.Token[JobRecord | None]) -> None:
    _current_job.reset(token)


def current_job() -> JobRecord | None:
    """The job the current task works for, if it is a job actor's."""
    return _current_job.get()


def job_log_fields(record: Any = None, **known: Any) -> dict[str, Any]:
    """The job fields of a log line about ``record`` (a :class:`~cumulus.jobs.JobRecord`), for ``extra=``: only
    the known ones (a first attempt is attempt 1; no worker before placement; no user without tokens). ``known``
    gives fields directly (``job_id=...``) where no record is at hand; they win over the record's."""
    fields: dict[str, Any] = {}
    if record is not None:
        spec = record.spec
        placement = record.placement
        fields = {"job_id": record.job_id, "attempt": record.attempt,
                  "worker": placement.worker if placement is not None else "",
                  "user": spec.owner, "trace_id": spec.trace_id}
    fields.update(known)
    return {name: fields[name] for name in JOB_FIELDS if fields.get(name) not in (None, "")}


class JobContextFilter(logging.Filter):
    """Copies the job fields of the current task's job (:func:`bind_job`) onto each record that has none of its
    own (``extra=`` wins). Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _current_job.get()
        if job is not None and not hasattr(record, "job_id"):
            for name, value in job_log_fields(job).items():
                setattr(record, name, value)
        return True


# ---- formats -----------------------------------------------------------------------------------------------------


def iso_utc(seconds: float) -> str:
    """``seconds`` (Unix time) as ISO 8601 in UTC with milliseconds: ``2025-01-31T12:00:00.123Z``."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


class TextLogFormatter(logging.Formatter):
    """The human format (``time LEVEL logger: message``), with ``[job=... attempt=... trace=...]`` at the end of
    a line about a job: the job id to read, the trace id to grep for."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = getattr(record, "job_id", None)
        if not job_id:
            return line
        tags = [f"job={job_id}"]
        if getattr(record, "attempt", 1) not in (None, 1):
            tags.append(f"attempt={record.attempt}")
        if getattr(record, "trace_id", None):
            tags.append(f"trace={record.trace_id}")
        text, newline, rest = line.partition("\n")  # a traceback follows the message: the tags end its line
        return f"{text} [{' '.join(tags)}]{newline}{rest}"


def json_formatter() -> logging.Formatter:
    """The ``json`` format's formatter (imports python-json-logger, a server dependency, only when used)."""
    from pythonjsonlogger.json import JsonFormatter

    class JsonLogFormatter(JsonFormatter):
        """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, then the job
        fields that are known, then any other ``extra``; ``exc_info`` (the traceback, one string) when there is
        one. json.dumps escapes newlines, so a multi-line message or traceback stays on its line."""

        def __init__(self) -> None:
            super().__init__("%(levelname)s %(name)s %(message)s",
                             rename_fields={"levelname": "level", "name": "logger"})

        def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                       message_dict: dict[str, Any]) -> None:
            super().add_fields(log_data, record, message_dict)
            ordered = {"time": iso_utc(record.created)}
            for name in ("level", "logger", "message", *JOB_FIELDS):
                if name in log_data:
                    ordered[name] = log_data.pop(name)
            ordered.update(log_data)
            log_data.clear()
            log_data.update(ordered)

    return JsonLogFormatter()


def formatter_for(format: str) -> logging.Formatter:
    if format not in FORMATS:
        raise ValueError(f"logging.format {format!r} is not one of {', '.join(FORMATS)}")
    return json_formatter() if format == "json" else TextLogFormatter()


# ---- setup -------------------------------------------------------------------------------------------------------


def configure_logging(level: str, format: str = "text") -> None:
    """Set the supervisor's log level (``logging.level``) and format (``logging.format``) on the root logger's
    handlers (a stderr handler is added when there is none), and install :class:`JobContextFilter` on them.
    Chatty libraries say only warnings unless the level is DEBUG. Idempotent."""
    root = logging.getLogger()
    root.setLevel(level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter = formatter_for(format)
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())


__all__ = ["CHATTY_LIBRARIES", "FORMATS", "JOB_FIELDS", "JobContextFilter", "TextLogFormatter", "bind_job",
           "configure_logging", "current_job", "formatter_for", "iso_utc", "job_log_fields", "json_formatter",
           "unbind_job"]
