"""A job's live log and state over Server-Sent Events (``/jobs/{id}/events``), on the real supervisor (fakes) and
its real HTTP port: lines arrive live, a later reader gets the log replayed from the start, the stream ends with an
``end`` event once the job is torn down, batches keep the lines in order, a revoked token stops a stream, and a
reader that goes away leaves no subscription behind."""

from __future__ import annotations

import json

import trio

from cumulus.dashboard import events as events_module
from cumulus.identity import Caller
from cumulus.jobs import JobState
from tests.dashboard_helpers import dashboard, wait_until
from tests.test_job_lifecycle import spec

ALICE = Caller("alice")


async def read_events(client, path: str, *, timeout: float = 30) -> list[tuple[str, object]]:
    """Every event of the stream until it ends (it must end by itself within ``timeout``)."""
    out: list[tuple[str, object]] = []
    buffer = ""
    with trio.fail_after(timeout):
        async with client.stream("GET", path) as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            assert reply.headers["cache-control"] == "no-store"
            async for text in reply.aiter_text():
                buffer += text
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.splitlines()
                                  if ": " in line and not line.startswith(":"))
                    if "event" in fields:
                        out.append((fields["event"], json.loads(fields["data"])))
    return out


def lines_of(events: list[tuple[str, object]]) -> list[list[str]]:
    return [line for kind, data in events if kind == "logs" for line in data]  # type: ignore[union-attr]


async def test_a_live_reader_gets_the_log_as_it_is_printed_and_the_end():
    async with dashboard() as d:
        alice = await d.signed_in("alice")
        record = await d.api.submit(spec(runtime=1, env={"FAKE_LATE_STDOUT": "3"}), caller=ALICE)
        events = await read_events(alice, f"/jobs/{record.job_id}/events")
        assert record.torn_down.is_set()  # the stream ended because the job was torn down
        states = [data["state"] for kind, data in events if kind == "state"]
        assert states[0] == "QUEUED" and states[-1] == "COMPLETED" and "RUNNING" in states
        assert events[-1] == ("end", {"state": "COMPLETED"})
        lines = lines_of(events)
        assert lines[0] == ["stdout", f"hello from {record.job_id}"]
        assert ["stdout", "late line 2"] in lines and ["stderr", "[cumulus] job finished in 1 s"] in lines
        assert any(kind == "note" and "placed on" in data["text"] for kind, data in events)
        # the log lines come between RUNNING and the end
        kinds = [(kind, data.get("state") if isinstance(data, dict) else None) for kind, data in events]
        assert kinds.index(("state", "RUNNING")) < kinds.index(("logs", None)) < kinds.index(("state", "COMPLETED"))
        await alice.aclose()


async def test_a_later_reader_gets_the_log_replayed_from_the_start():
    async with dashboard() as d:
        alice = await d.signed_in("alice")
        record = await d.api.submit(spec(runtime=0.1, env={"FAKE_LATE_STDOUT": "2000"}), caller=ALICE)
        await wait_until(record.torn_down.is_set)
        events = await read_events(alice, f"/jobs/{record.job_id}/events")
        lines = lines_of(events)
        assert lines[0] == ["stdout", f"hello from {record.job_id}"]
        late = [text for stream, text in lines if text.startswith("late line ")]
        assert late == [f"late line {i}" for i in range(2000)]  # all of them, in order
        assert sum(kind == "logs" for kind, _ in events) < 100  # in batches, not an event per line
        assert events[-1] == ("end", {"state": "COMPLETED"})
        await alice.aclose()


async def test_a_revoked_token_stops_the_stream(monkeypatch):
    monkeypatch.setattr(events_module, "KEEPALIVE_SECONDS", 0.2)
    async with dashboard() as d:
        alice = await d.signed_in("alice")
        record = await d.api.submit(spec(runtime=60), caller=ALICE)
        await wait_until(lambda: record.state is JobState.RUNNING)
        async with trio.open_nursery() as nursery:
            got: list[list[tuple[str, object]]] = []

            async def read() -> None:
                got.append(await read_events(alice, f"/jobs/{record.job_id}/events", timeout=10))

            nursery.start_soon(read)
            await trio.sleep(0.5)
            await d.api.revoke_token("alice")
        assert got and got[0][-1] == ("signed-out", {})  # it stopped, saying why, and without an end
        assert not record.state.terminal
        await alice.aclose()


async def test_a_reader_that_goes_away_leaves_no_subscription():
    async with dashboard() as d:
        alice = await d.signed_in("alice")
        record = await d.api.submit(spec(runtime=60), caller=ALICE)
        await wait_until(lambda: record.state is JobState.RUNNING)
        before = len(record._subscribers)
        async with alice.stream("GET", f"/jobs/{record.job_id}/events") as reply:
            async for text in reply.aiter_text():
                if "RUNNING" in text:
                    break
            assert len(record._subscribers) == before + 1
        await alice.aclose()  # the connection closes: the server sees the disconnect
        await wait_until(lambda: len(record._subscribers) == before, timeout=10)
        assert not record.state.terminal
