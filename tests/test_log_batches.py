"""Log lines that arrive together travel as one ``logs`` message and come out as one update per line, in order."""

from __future__ import annotations

from cumulus.client.types import JobUpdate
from cumulus.jobs import JobEvent, JobState
from cumulus.rpc.convert import events_to_pb


def test_runs_of_lines_become_batches_and_come_back_line_by_line_in_order():
    events = [JobEvent("job-1", 1.0, state=JobState.RUNNING)]
    events += [JobEvent("job-1", 2.0 + i / 1000, log=("stdout" if i % 3 else "stderr", f"line {i}")) for i in range(7)]
    events += [JobEvent("job-1", 3.0, message="note"), JobEvent("job-1", 3.5, log=("stdout", "alone"))]
    events += [JobEvent("job-1", 4.0, result=b"envelope"), JobEvent("job-1", 4.1, state=JobState.COMPLETED)]

    messages = events_to_pb(events, max_lines=3)

    kinds = [m.WhichOneof("kind") for m in messages]
    assert kinds == ["state", "logs", "logs", "log", "message", "log", "result", "state"]
    updates = [u for m in messages for u in JobUpdate.all_from_pb(m)]
    lines = [(u.stream, u.text) for u in updates if u.kind == "log"]
    assert lines == [e.log for e in events if e.log is not None]
    assert [round(u.time, 6) for u in updates if u.kind == "log"][:7] == [round(2.0 + i / 1000, 6) for i in range(7)]
    assert [u.kind for u in updates][-2:] == ["result", "state"]
