"""Trace ids end to end on the real local cluster (issue 14, item 5), through a REAL ``cumulus supervisor``
process that writes JSON logs (``logging.format: json``): the job's container sees the trace id of the client's
``traceparent`` as ``CUMULUS_TRACE_ID`` (the job returns it), a submission without one gets a fresh trace id that
the job sees too, ``cumulus describe`` prints it, and every line of the supervisor's log that names the job is a
JSON object carrying its trace id (its first and last lines, "accepted" and "ended COMPLETED", included).
"""

from __future__ import annotations

import json
import os

import pytest

from supervisor_process import start_supervisor

TRACE = os.urandom(16).hex()  # a new one per run: the log of an earlier run cannot make this one pass
TRACEPARENT = f"00-{TRACE}-{os.urandom(8).hex()}-01"
JOB_TIMEOUT = 120.0
# The helper's config already has a logging section; a second one replaces it (PyYAML keeps the last key).
JSON_LOGS = 'logging:\n  level: "INFO"\n  format: "json"\n'


def returns_its_trace_id():
    import os

    return os.environ["CUMULUS_TRACE_ID"]


@pytest.fixture(scope="module")
def sup(cluster, tmp_path_factory):
    hostnames = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    process = start_supervisor(tmp_path_factory.mktemp("trace-supervisor"), hostnames, extra=JSON_LOGS)
    try:
        yield process
    finally:
        code = process.stop()
    assert code == 0, process.log_tail()


def log_lines_about(sup, job_id: str) -> list[dict]:
    """The supervisor's log lines that name ``job_id``, each parsed (it must be one JSON object)."""
    lines = [line for line in sup.log().splitlines() if job_id in line]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    return parsed


def test_the_container_sees_the_clients_trace_id_and_every_log_line_carries_it(sup):
    with sup.client() as client:
        ref = client.submit_call(returns_its_trace_id, traceparent=TRACEPARENT, gpu=0.25, duration=300)
        assert ref.trace_id == TRACE
        assert ref.result(JOB_TIMEOUT) == TRACE
        assert client.status(ref.job_id).trace_id == TRACE
    sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "COMPLETED"})  # waits for its teardown

    lines = log_lines_about(sup, ref.job_id)
    messages = [line["message"] for line in lines]
    assert any("accepted" in m for m in messages) and any("ended COMPLETED" in m for m in messages), messages
    for line in lines:
        assert line["trace_id"] == TRACE and line["job_id"] == ref.job_id, line
        assert {"time", "level", "logger", "message"} <= set(line), line
    ended = next(line for line in lines if "ended COMPLETED" in line["message"])
    assert ended["attempt"] == 1 and ended["worker"], ended

    res = sup.cli("describe", ref.job_id, check_rc=0)
    assert any(line.startswith("Trace id:") and line.endswith(TRACE) for line in res.stdout.splitlines()), res.stdout


def test_a_submission_without_a_traceparent_gets_a_fresh_trace_id_the_job_sees(sup, monkeypatch):
    monkeypatch.delenv("CUMULUS_TRACEPARENT", raising=False)
    with sup.client() as client:
        ref = client.submit_call(returns_its_trace_id, gpu=0.25, duration=300)
        seen = ref.result(JOB_TIMEOUT)
        assert seen == ref.trace_id == client.status(ref.job_id).trace_id
    assert len(seen) == 32 and seen != TRACE and int(seen, 16) != 0
    sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "COMPLETED"})
    assert all(line["trace_id"] == seen for line in log_lines_about(sup, ref.job_id))
