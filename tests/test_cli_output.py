"""What the ``cumulus`` job commands print, on objects of the SDK's shapes (no supervisor): ``describe``,
``health``, JSON output, ``logs --tail``."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from cumulus.cli import main
from cumulus.client import cli as client_cli
from cumulus.client import cli_output as out
from cumulus.client.types import JobDescription, JobHistoryEvent, JobInfo

T0 = 1_700_000_000.0




@dataclass(frozen=True)
class FakeDescription:  # the shape of cumulus.client.types.JobDescription
    info: JobInfo
    events: list[JobHistoryEvent] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"info": self.info.to_dict(), "events": [e.to_dict() for e in self.events]}


INFO = JobInfo(job_id="j-1", state="FAILED", name="train", reason="node_lost", worker="cw1", device_index=0,
               gpu=0.5, partition_id="p-7", service_id="svc-9", submitted_at=T0, started_at=T0 + 2.5,
               finished_at=T0 + 95, attempt=1, released=("service svc-9", "partition p-7"))
EVENTS = [
    JobHistoryEvent(T0, "state", "QUEUED", state="QUEUED"),
    JobHistoryEvent(T0 + 0.2, "message", "queued at position 3"),
    JobHistoryEvent(T0 + 2.5, "placement", "placed on cw1 device 0 (0.5 of Fake GPU)"),
    JobHistoryEvent(T0 + 3, "state", "", state="RUNNING"),
    JobHistoryEvent(T0 + 60, "retry", "node cw2 lost: retrying (attempt 1)", attempt=1),
    JobHistoryEvent(T0 + 95, "state", "", state="FAILED", reason="node_lost", attempt=1),
    JobHistoryEvent(T0 + 95.5, "teardown", "released service svc-9, partition p-7", attempt=1),
]


def test_describe_fields_then_events_with_absolute_and_relative_times():
    text = out.describe_text(FakeDescription(INFO, list(reversed(EVENTS))), now=T0 + 3600)
    head, _, events = text.partition("\nEvents:\n")
    assert "Job:" in head and "j-1" in head and "State:" in head and "FAILED (node_lost)" in head
    assert "Worker:" in head and "cw1 device 0" in head and "Released:" in head and "partition p-7" in head
    assert f"{out.when(T0)} (1h ago)" in head and "Duration:" in head and "1m32s" in head
    lines = events.splitlines()
    assert lines[0].split() == ["TIME", "SINCE", "KIND", "ATTEMPT", "EVENT"]
    rows = lines[1:]
    assert len(rows) == len(EVENTS)  # sorted by time, oldest first
    assert rows[0].startswith(f"  {out.when(T0)}  +0.0s") and rows[0].rstrip().endswith("QUEUED")
    assert "+2.5s" in rows[2] and "placement" in rows[2] and "placed on cw1 device 0" in rows[2]
    assert rows[3].rstrip().endswith("RUNNING")  # a state event without text: its state
    assert "+1m00s" in rows[4] and "retry" in rows[4]
    assert rows[5].rstrip().endswith("FAILED (node_lost)")
    assert "+1m35s" in rows[6] and "teardown" in rows[6]


def test_describe_of_the_sdks_types():
    desc = JobDescription(info=INFO, events=list(EVENTS))
    assert out.describe_text(desc, now=T0 + 60) == out.describe_text(FakeDescription(INFO, EVENTS), now=T0 + 60)
    assert json.loads(out.dumps(desc.to_dict())) == FakeDescription(INFO, EVENTS).to_dict()


def test_describe_without_events():
    assert out.describe_text(FakeDescription(INFO, []), now=T0).endswith("Events:  <none>")


class FakeClient:
    address = "fake:1"

    def describe(self, job_id: str) -> FakeDescription:
        assert job_id == "j-1"
        return FakeDescription(INFO, EVENTS)


@pytest.fixture()
def fake_client(monkeypatch):
    monkeypatch.setattr(client_cli, "_client", lambda args: FakeClient())


def test_describe_command(fake_client, capsys):
    assert main(["describe", "j-1"]) == 0
    text = capsys.readouterr().out
    assert "Events:" in text and "placed on cw1 device 0" in text
    assert main(["-o", "json", "describe", "j-1"]) == 0
    raw = capsys.readouterr().out
    data = json.loads(raw)
    assert data["info"]["job_id"] == "j-1" and [e["kind"] for e in data["events"]][:3] == [
        "state", "message", "placement"]
    assert raw.index('"events"') < raw.index('"info"')  # sorted keys


def test_json_is_machine_stable():
    assert out.dumps({"b": 1, "a": {"d": 2, "c": 3}}) == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}'


def test_span():
    assert [out.span(s) for s in (0.04, 9.96, 12, 184, 7500, 90000)] == [
        "0.0s", "10.0s", "12s", "3m04s", "2h05m", "1d01h"]


HEALTH = {"address": "h:1", "serving": True, "status": "SERVING", "reason": "", "version": "0.1.0",
          "supervisor_id": "ab12", "workers_ready": 2, "jobs_active": 0}


def test_health_text():
    assert out.health_text(HEALTH) == "SERVING (cumulus 0.1.0, supervisor ab12, 2 workers ready, 0 jobs active)"
    one = dict(HEALTH, status="NOT_SERVING", reason="no workers", workers_ready=1, jobs_active=1)
    assert out.health_text(one) == ("NOT_SERVING: no workers (cumulus 0.1.0, supervisor ab12, 1 worker ready, "
                                    "1 job active)")


# ---- logs --tail ----------------------------------------------------------------------------------------------


@dataclass
class U:
    kind: str
    text: str = ""
    state: str = ""
    stream: str = "stdout"


def texts(updates):
    return [u.text or u.state for u in updates]


def test_tail_without_follow_keeps_the_last_lines_and_every_state():
    updates = [U("state", state="RUNNING")] + [U("log", f"line {i}") for i in range(10)] + [
        U("state", state="COMPLETED")]
    assert texts(out.tail_updates(iter(updates), 3, follow=False)) == [
        "RUNNING", "COMPLETED", "line 7", "line 8", "line 9"]
    assert texts(out.tail_updates(iter(updates), 0, follow=False)) == ["RUNNING", "COMPLETED"]


def test_tail_with_follow_prints_the_last_lines_of_the_history_then_everything_live():
    live = threading.Event()

    def stream():
        yield U("state", state="RUNNING")
        for i in range(10):
            yield U("log", f"old {i}")
        time.sleep(0.5)  # the history is replayed at once; live lines come later
        live.set()
        for i in range(3):
            yield U("log", f"new {i}")
        yield U("state", state="COMPLETED")

    got = texts(out.tail_updates(stream(), 2, follow=True, settle=0.2, cap=5))
    assert got == ["RUNNING", "old 8", "old 9", "new 0", "new 1", "new 2", "COMPLETED"]


def test_tail_with_follow_of_a_job_that_never_pauses_stops_buffering_after_the_cap():
    def stream():
        for i in range(300):
            time.sleep(0.005)
            yield U("log", f"l{i}")

    got = texts(out.tail_updates(stream(), 2, follow=True, settle=0.2, cap=0.3))
    first = int(got[0][1:])
    assert first > 5 and got == [f"l{i}" for i in range(first, 300)]  # the early lines cut, the rest all came


def test_tail_with_follow_passes_errors_on():
    def stream():
        yield U("log", "a")
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        list(out.tail_updates(stream(), 5, follow=True, settle=0.1))


def test_status_shows_the_last_checkpoint_and_the_time_paused_attempts_ran():
    from cumulus.client.cli_output import job_fields
    from cumulus.client.types import JobInfo

    paused = dict(job_fields(JobInfo(job_id="j", state="PAUSED", checkpoint_step=40, checkpoints=3, ran_seconds=90.5)))
    assert paused["checkpoint"] == "step 40 (3 kept); ran 1m30s before its pauses"
    assert dict(job_fields(JobInfo(job_id="j", state="RUNNING")))["checkpoint"] is None  # none saved: not shown
