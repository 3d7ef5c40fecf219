"""A job's history (``cumulus describe``): kept in the journal's ``job_events``, bounded, scrubbed of env values,
and read through DescribeJob - in process and end to end over real gRPC, on the in-memory fakes (no cluster)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from typing import Any, Callable, Iterator

import grpc
import pytest
import trio

from cumulus.client.connection import load_client_config, open_channel
from cumulus.app import open_supervisor
from cumulus.client.client import CumulusClient
from cumulus.client.types import JobDescription
from cumulus.errors import NotFound
from cumulus.history import MAX_EVENTS_PER_JOB, MAX_QUEUE_EVENTS, REDACTED, HistoryEvent
from cumulus.jobs import JobRecord, JobSpec, JobState, TeardownReport
from cumulus.journal import JournalStore, row_of
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from tests.fakes.fake_api import free_port
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import fake_cluster, lose_partition_when_running, settings, spec
from tests.test_journal import _crash_and_restart, run_supervisor
from tests.trio_thread import serving_in_thread

LIFE = ["QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING", "COMPLETED"]
SECRET = "sk-live-4f9c2e71a8b3d605"
ENGINE_SECRET = "Error grabbing logs: rpc error: token 93be1d7c0a25f4e8 rejected"

# The journal as it was before job_events existed.
OLD_SCHEMA = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, idempotency_key TEXT, name TEXT NOT NULL DEFAULT '', spec TEXT NOT NULL,
    package BLOB NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', attempt INTEGER NOT NULL DEFAULT 1,
    placement TEXT, partition_id TEXT NOT NULL DEFAULT '', service_id TEXT NOT NULL DEFAULT '', result BLOB,
    teardown TEXT, submitted_at REAL NOT NULL, started_at REAL, finished_at REAL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(idempotency_key) WHERE idempotency_key != '';
CREATE INDEX jobs_state ON jobs(state);
"""


def state_names(events: list[Any]) -> list[str]:
    return [e.state for e in events if e.kind == "state"]


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


# ---- in process ---------------------------------------------------------------------------------------------------


async def test_a_jobs_history_is_journaled_in_order_with_times_and_survives_reopening(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def first(sup):
        record = await sup.submit(spec(runtime=0.2))
        await record.torn_down.wait()
        described, events = await sup.describe(record.job_id)
        assert described is record
        return record, events

    record, events = await run_supervisor(path, first)
    assert state_names(events) == LIFE
    assert kinds(events).index("placement") == kinds(events).index("state") + 2  # after SCHEDULING
    assert kinds(events)[-1] == "teardown" and events[-1].data["released"] == list(record.teardown.released)
    (placement,) = [e for e in events if e.kind == "placement"]
    assert placement.data["worker"] == record.placement.worker and placement.text.startswith("placed on fw")
    times = [e.at for e in events]
    assert times == sorted(times) and record.submitted_at <= times[0] and times[-1] <= time.time()
    assert all(e.attempt == 1 for e in events)
    assert not any(e.kind == "message" and e.text.startswith("hello from") for e in events)  # never log lines

    _, again = await run_supervisor(path, lambda sup: sup.describe(record.job_id))
    assert again == events  # kept in the file, read back as written
    store = JournalStore(str(path))
    assert store.events(record.job_id) == events
    store.close()


def test_history_is_bounded_per_job_and_always_keeps_the_jobs_end(tmp_path):
    store = JournalStore(str(tmp_path / "journal.sqlite3"))
    noise = [HistoryEvent("j1", 1000.0 + i, "message", f"m{i}") for i in range(3 * MAX_EVENTS_PER_JOB)]
    end = [HistoryEvent("j1", 5000.0, "state", "FAILED: x", state="FAILED", reason="x"),
           HistoryEvent("j1", 5001.0, "teardown", "teardown: released service", data={"released": ["service"],
                                                                                     "leaked": []})]
    other = HistoryEvent("j2", 1.0, "state", "QUEUED", state="QUEUED")
    store.save_many([], noise[:150])  # in several transactions, as the journal actor writes them
    store.save_many([], noise[150:])
    store.save_many([], [*end, other])
    events = store.events("j1")
    assert len(events) == MAX_EVENTS_PER_JOB + len(end)
    assert [e.text for e in events[:MAX_EVENTS_PER_JOB - 1]] == [f"m{i}" for i in range(MAX_EVENTS_PER_JOB - 1)]
    assert events[MAX_EVENTS_PER_JOB - 1].text.startswith("history limit reached")
    assert events[-2:] == end
    assert store.events("j2") == [other]
    store.close()


def test_a_jobs_history_is_deleted_with_the_job(tmp_path):
    store = JournalStore(str(tmp_path / "journal.sqlite3"))
    old, kept = (JobRecord(job_id, JobSpec(package=b"zip")) for job_id in ("j-old", "j-kept"))
    old.state, old.finished_at = JobState.COMPLETED, 100.0
    store.save_many([row_of(old, with_package=True), row_of(kept, with_package=True)],
                    [HistoryEvent(r.job_id, 1.0, "state", "QUEUED", state="QUEUED") for r in (old, kept)])
    assert store.forget_before(1000.0) == 1
    assert (store.events("j-old"), len(store.events("j-kept"))) == ([], 1)
    store.close()


def test_queue_position_changes_are_coalesced_and_bounded():
    record = JobRecord("j", JobSpec(package=b"zip"))
    noted: list[HistoryEvent] = []
    record.on_history = noted.append
    for position in [7, 7, 6, 6, 6, 5, *range(100, 1, -1), 0]:
        record.set_queue_position(position)
    assert [e.text for e in noted[:2]] == ["queue position 6 (was 7)", "queue position 5 (was 6)"]
    assert len(noted) == MAX_QUEUE_EVENTS and all(e.kind == "queue" for e in noted)


async def test_a_queued_jobs_history_has_its_position_changes(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        records = [await sup.submit(spec(gpu=1.0, runtime=5)) for _ in range(3)]
        for record in records:
            await record.torn_down.wait()
        _, events = await sup.describe(records[2].job_id)
    assert [e.text for e in events if e.kind == "queue"] == ["queue position 1 (was 2)"]
    queued = [e for e in events if e.state == "QUEUED"]
    assert queued[-1].reason == "waiting for capacity (position 2)"
    assert state_names(events)[-1] == "COMPLETED"


async def test_a_retried_jobs_history_has_the_retry_and_each_attempts_placement(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=3))
        await lose_partition_when_running(record, world)
        await record.torn_down.wait()
        _, events = await sup.describe(record.job_id)
    (retry,) = [e for e in events if e.kind == "retry"]
    assert (retry.attempt, retry.data["failed_attempt"]) == (2, 1) and retry.reason.startswith("partition_lost")
    assert retry.text.startswith("attempt 1 failed (partition_lost")
    assert kinds(events).count("placement") == 2 and kinds(events).count("teardown") == 1
    before = events[:events.index(retry)]
    assert state_names(before) == LIFE[:-1] and {e.attempt for e in before} == {1}
    after = events[events.index(retry) + 1:]
    assert state_names(after) == LIFE[1:] and {e.attempt for e in after} == {2}


async def test_an_old_journal_without_the_events_table_opens_and_records_history(tmp_path):
    path = tmp_path / "journal.sqlite3"
    old = JobRecord("unit-old000000001", JobSpec(package=b"zip", env={"FAKE_RUNTIME": "0.2"}))
    old.state, old.finished_at, old.result = JobState.COMPLETED, time.time(), b"ok:old"
    old.teardown = TeardownReport(released=("service",))
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        row = row_of(old, with_package=True)
        for newer_column in ("owner", "secret_env", "running_at", "ran_seconds", "calls"):  # added on open
            del row[newer_column]
        db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})", row)

    async def body(sup):
        record, events = await sup.describe(old.job_id)
        new = await sup.submit(spec(runtime=0.2))
        await new.torn_down.wait()
        return record, events, (await sup.describe(new.job_id))[1]

    record, old_events, new_events = await run_supervisor(path, body)
    assert (record.state, record.result, old_events) == (JobState.COMPLETED, b"ok:old", [])
    assert state_names(new_events) == LIFE


async def test_a_re_adopted_jobs_history_spans_the_supervisor_restart(tmp_path):
    recovered, _, _ = await _crash_and_restart(tmp_path, downtime=0.5)
    store = JournalStore(str(tmp_path / "after-crash.sqlite3"))  # the journal the restarted supervisor used
    for record in recovered:
        events = store.events(record.job_id)
        texts = [e.text for e in events]
        adopted = texts.index(f"re-adopting after a supervisor restart (on {record.placement.worker})")
        assert state_names(events[:adopted]) == LIFE[:-1]  # journaled by the supervisor that was killed
        assert state_names(events[adopted:]) == ["COMPLETED"] and kinds(events)[-1] == "teardown"
    store.close()


async def test_unknown_job_cannot_be_described(autojump_clock):
    async with fake_cluster() as (sup, world):
        with pytest.raises(NotFound, match="unit-nosuchjob"):
            await sup.describe("unit-nosuchjob")


def test_history_texts_are_scrubbed_of_env_values():
    record = JobRecord("j", JobSpec(package=b"zip", env={"TOKEN": SECRET, "SHORT": "1"}))
    noted: list[HistoryEvent] = []
    record.on_history = noted.append
    record.add_message(f"engine said: bad token {SECRET}")
    record.set_state(JobState.FAILED, f"container_failed: rejected ({SECRET})")
    record.set_torn_down(TeardownReport(leaked=(f"service s1: {SECRET}",)))
    assert SECRET not in json.dumps([dataclasses.asdict(e) for e in noted])
    assert noted[0].text == f"engine said: bad token {REDACTED}" and noted[1].attempt == 1


# ---- end to end over gRPC -----------------------------------------------------------------------------------------


def work(x):  # never run: the fake cluster's containers only pretend to
    return x


@contextlib.contextmanager
def grpc_supervisor(path, **overrides: Any) -> Iterator[str]:
    """The real supervisor on the in-memory fakes, serving real gRPC on loopback, in a thread of its own."""
    address = f"127.0.0.1:{free_port()}"
    conf = settings(**{"journal.path": str(path), "grpc.listen": address, "server.http_listen": "127.0.0.1:0",
                       **overrides})

    async def serve(ready: Callable[[Any], None]) -> None:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(1), fake_node(2)], nursery)
            backends = dataclasses.replace(world.backends(), needs_asyncio=True)  # the gRPC server needs it
            async with open_supervisor(conf, backends=backends) as sup:
                with trio.fail_after(20):
                    while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                        await trio.sleep(0.05)
                ready(address)
                await trio.sleep_forever()

    with serving_in_thread(serve, name="grpc-supervisor", start_timeout=60) as served_address:
        yield served_address


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "journal.sqlite3"
    with grpc_supervisor(path) as address:
        with CumulusClient(address, log_to_driver=False) as client:
            yield client, path


def described_when_torn_down(client: CumulusClient, job_id: str) -> JobDescription:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        description = client.describe(job_id)
        if description.events and description.events[-1].kind == "teardown":
            return description
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} was not torn down in time: {client.describe(job_id)}")


def test_describe_over_grpc_shows_states_with_times_placement_and_teardown(served):
    client, _ = served
    ref = client.submit(work, 1, env={"FAKE_RUNTIME": "0.2"}, log_to_driver=False)
    description = described_when_torn_down(client, ref.job_id)
    assert (description.info.job_id, description.info.state) == (ref.job_id, "COMPLETED")
    events = description.events
    assert state_names(events) == LIFE
    times = [e.at for e in events]
    assert times == sorted(times) and len({e.at for e in events if e.kind == "state"}) == len(LIFE)
    assert description.info.submitted_at <= times[0]
    (placement,) = [e for e in events if e.kind == "placement"]
    assert placement.text.startswith(f"placed on {description.info.worker} device ")
    assert events.index(placement) == kinds(events).index("state") + 2  # between SCHEDULING and CREATING_PARTITION
    teardown = events[-1]
    assert teardown.kind == "teardown" and "reservation" in teardown.text and "nothing leaked" in teardown.text
    assert all(e.kind in ("state", "message", "placement", "retry", "teardown") and e.text for e in events)
    data = json.loads(json.dumps(description.to_dict()))
    assert data["info"]["job_id"] == ref.job_id and data["events"][0]["state"] == "QUEUED"


def test_describe_over_grpc_shows_a_retry(served):
    client, _ = served
    ref = client.submit_call(work, (1,), env={"FAKE_RUNTIME": "0.1", "FAKE_EXIT": "1"}, retries=1,
                             retry_exceptions=True, log_to_driver=False)
    events = described_when_torn_down(client, ref.job_id).events
    (retry,) = [e for e in events if e.kind == "retry"]
    assert (retry.attempt, retry.reason, retry.state) == (2, "user_exception", "")
    assert retry.text.startswith("attempt 1 failed (user_exception); retrying in ")
    final = [e for e in events if e.kind == "state"][-1]
    assert (final.state, final.reason, final.attempt) == ("FAILED", "user_exception", 2)


def test_describe_over_grpc_of_an_unknown_job_is_not_found(served):
    client, _ = served
    with pytest.raises(NotFound, match="unit-000000000000"):
        client.describe("unit-000000000000")
    with open_channel(load_client_config(client.address)) as channel:
        stub = cumulus_pb2_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.DescribeJob(pb.DescribeJobRequest(job_id="unit-000000000000"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "unit-000000000000" in raised.value.details()


def test_a_secret_env_value_is_never_in_the_history_nor_in_the_journal_beyond_the_jobs_spec(served, tmp_path):
    client, path = served
    # FAKE_ENGINE_MESSAGE: the engine's line in the followed log, which becomes a message of the job: here it
    # carries an env value, as an engine error might.
    ref = client.submit(work, 1, env={"FAKE_RUNTIME": "0.2", "API_TOKEN": SECRET, "FAKE_ENGINE_MESSAGE": ENGINE_SECRET},
                        log_to_driver=False)
    description = described_when_torn_down(client, ref.job_id)
    text = json.dumps(description.to_dict())
    assert f"log stream: {REDACTED}; following the log again" in text  # the message was there, scrubbed
    assert SECRET not in text and ENGINE_SECRET not in text and "93be1d7c0a25f4e8" not in text
    # The journal file: the jobs table keeps the job's spec and package (env included: a restarted supervisor
    # needs them to run the job again). Blank those two and everything else in the file must be free of it.
    copy, scrubbed = tmp_path / "copy.sqlite3", tmp_path / "scrubbed.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as source, contextlib.closing(sqlite3.connect(copy)) as target:
        source.backup(target)
        target.execute("UPDATE jobs SET spec = '{}', package = x''")
        target.commit()
        assert target.execute("SELECT COUNT(*) FROM job_events WHERE job_id = ?", (ref.job_id,)).fetchone()[0] > 5
        target.execute("VACUUM INTO ?", (str(scrubbed),))
    data = scrubbed.read_bytes()
    assert ref.job_id.encode() in data
    for secret in (SECRET, ENGINE_SECRET, "93be1d7c0a25f4e8"):
        assert secret.encode() not in data
