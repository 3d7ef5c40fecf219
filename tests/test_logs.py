"""Structured logs (issue 14, item 5; cumulus/logs.py): the JSON format (one object per line: time, level, logger,
message, and the job's fields where known), the text format's job tags, which job a line is about (bound by the
job's actor and inherited by every task it starts; ``extra=`` where a line about a job comes from elsewhere), and
that ``logging.format`` takes effect for ``cumulus supervisor``. A job run on the in-memory fakes logs with its
trace id and sees it as ``CUMULUS_TRACE_ID``."""

from __future__ import annotations

import io
import json
import logging
import re
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

from cumulus.jobs import JobRecord, JobSpec, Placement
from cumulus.logs import (JOB_FIELDS, JobContextFilter, bind_job, configure_logging, formatter_for, job_log_fields,
                          unbind_job)
from cumulus.tracing import is_trace_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def job_record(job_id: str = "sup-abc123", *, owner: str = "alice", trace_id: str = TRACE) -> JobRecord:
    return JobRecord(job_id, JobSpec(package=b"zip", owner=owner, trace_id=trace_id,
                                     secret_env={"API_KEY": "s3cr3t-value"}, env={"PLAIN": "visible-env"}))


@contextmanager
def captured(format: str, logger: str = "cumulus.test_logs", level: int = logging.DEBUG):
    """Lines that ``logger`` (and its children) write in ``format``, with the job filter, as the supervisor's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(format))
    handler.addFilter(JobContextFilter())
    target = logging.getLogger(logger)
    old_level = target.level
    target.addHandler(handler)
    target.setLevel(level)
    try:
        yield stream
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)


def json_lines(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # one object per line, each line valid JSON


# ---- the JSON format -----------------------------------------------------------------------------------------------


def test_json_lines_have_time_level_logger_message_and_nothing_unknown():
    log = logging.getLogger("cumulus.test_logs")
    with captured("json") as stream:
        log.info("plain %s", "line")
        log.warning("two\nlines stay on one")
    plain, multi = json_lines(stream)
    assert list(plain) == ["time", "level", "logger", "message"]
    assert ISO_UTC.fullmatch(plain["time"])
    assert (plain["level"], plain["logger"], plain["message"]) == ("INFO", "cumulus.test_logs", "plain line")
    assert multi["message"] == "two\nlines stay on one" and multi["level"] == "WARNING"


def test_json_carries_the_traceback_as_one_string_field():
    log = logging.getLogger("cumulus.test_logs")
    with captured("json") as stream:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    (line,) = json_lines(stream)
    assert line["message"] == "it failed"
    assert isinstance(line["exc_info"], str) and "ValueError: boom" in line["exc_info"]


def test_a_job_actors_binding_gives_the_job_fields_in_order_and_no_secret():
    log = logging.getLogger("cumulus.test_logs")
    record = job_record()
    token = bind_job(record)
    try:
        with captured("json") as stream:
            log.info("before placement")
            record.placement = Placement("worker-7", "node7", 0, 0.5)  # the job's actor writes these ...
            record.attempt = 2
            log.info("after a retry")  # ... and the next line reads them: nothing is re-bound
    finally:
        unbind_job(token)
    first, second = json_lines(stream)
    assert list(first) == ["time", "level", "logger", "message", "job_id", "attempt", "user", "trace_id"]
    assert (first["job_id"], first["attempt"], first["user"], first["trace_id"]) == ("sup-abc123", 1, "alice", TRACE)
    assert list(second)[4:] == list(JOB_FIELDS) and (second["attempt"], second["worker"]) == (2, "worker-7")
    assert "s3cr3t-value" not in stream.getvalue() and "visible-env" not in stream.getvalue()


def test_unknown_job_fields_are_left_out():
    assert job_log_fields(job_record(owner="", trace_id="")) == {"job_id": "sup-abc123", "attempt": 1}
    assert job_log_fields(job_id="j9") == {"job_id": "j9"}
    assert job_log_fields(None) == {}


def test_explicit_extra_wins_over_the_binding():
    log = logging.getLogger("cumulus.test_logs")
    token = bind_job(job_record("bound-job"))
    try:
        with captured("json") as stream:
            log.warning("about another job", extra=job_log_fields(job_id="other-job"))
    finally:
        unbind_job(token)
    (line,) = json_lines(stream)
    assert line["job_id"] == "other-job" and "trace_id" not in line


# ---- the text format -------------------------------------------------------------------------------------------------


def test_text_lines_are_as_before_and_lines_about_a_job_end_with_its_tags():
    log = logging.getLogger("cumulus.test_logs")
    with captured("text") as stream:
        log.info("no job here")
        log.info("about a job", extra=job_log_fields(job_record(), attempt=3))
        try:
            raise RuntimeError("x")
        except RuntimeError:
            log.exception("failed", extra=job_log_fields(job_id="j1"))
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(" INFO cumulus.test_logs: no job here")
    assert lines[1].endswith(f"INFO cumulus.test_logs: about a job [job=sup-abc123 attempt=3 trace={TRACE}]")
    assert lines[2].endswith("failed [job=j1]") and lines[3] == "Traceback (most recent call last):"


# ---- which tasks inherit the binding (Trio copies the context into the tasks a task starts) --------------------------


async def test_tasks_and_threads_a_bound_task_starts_inherit_its_job_and_others_do_not():
    log = logging.getLogger("cumulus.test_logs")
    record = job_record()

    async def job_actor(task_status=trio.TASK_STATUS_IGNORED):
        bind_job(record)  # what JobActor.on_start does first, in its own task
        async with trio.open_nursery() as inner:
            inner.start_soon(child)  # started after the binding: inherits it
            task_status.started()
        log.info("actor itself")

    async def child():
        await trio.sleep(0)
        log.info("child task")
        await trio.to_thread.run_sync(log.info, "worker thread")

    async def bystander():
        log.info("another actor")

    with captured("json") as stream:
        async with trio.open_nursery() as nursery:
            await nursery.start(job_actor)
            nursery.start_soon(bystander)
    lines = {line["message"]: line for line in json_lines(stream)}
    for message in ("actor itself", "child task", "worker thread"):
        assert lines[message]["trace_id"] == TRACE and lines[message]["job_id"] == record.job_id, message
    assert "job_id" not in lines["another actor"]


# ---- the cluster's lines about a job: explicit extra --------------------------------------------------------------


async def test_the_clusters_line_about_a_lost_job_carries_the_jobs_fields():
    from cumulus.actors.cluster import ClusterActor

    class UnreachableSwarm:
        async def list_services(self, labels):
            raise ConnectionError("manager unreachable")

    cluster = ClusterActor.__new__(ClusterActor)  # only what _remove_services_of reads
    record = job_record("lost-job")
    cluster.swarm, cluster.jobs = UnreachableSwarm(), {record.job_id: record}
    with captured("json", logger="cumulus.actors.cluster") as stream:
        assert await cluster._remove_services_of("lost-job") is None
    (line,) = json_lines(stream)
    assert "could not remove the services of lost job" in line["message"]
    assert (line["job_id"], line["trace_id"], line["user"]) == ("lost-job", TRACE, "alice")


# ---- `cumulus supervisor` applies logging.format ----------------------------------------------------------------------


def test_the_supervisor_process_applies_logging_format(monkeypatch):
    from cumulus import process
    from cumulus.config import load_settings

    settings = load_settings(environ={"CUMULUS_LOGGING_FORMAT": "json", "CUMULUS_LOGGING_LEVEL": "INFO"})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    saved = root.level, [(h, h.formatter, list(h.filters)) for h in root.handlers]
    root.addHandler(handler)
    monkeypatch.setattr(process.trio, "run", lambda *args: 0)  # the process's setup only, no supervisor
    try:
        assert process.run_supervisor_process(settings) == 0
        token = bind_job(job_record())
        try:
            logging.getLogger("cumulus.actors.job").info("job line")
        finally:
            unbind_job(token)
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for other, formatter, filters in saved[1]:
            other.setFormatter(formatter)
            other.filters[:] = filters
    (line,) = json_lines(stream)
    assert line["message"] == "job line" and line["trace_id"] == TRACE and line["logger"] == "cumulus.actors.job"


# ---- a real job actor on the in-memory fakes ---------------------------------------------------------------------------


@asynccontextmanager
async def fake_cluster():
    from cumulus.app import open_supervisor
    from cumulus.config import load_settings
    from tests.credentials import security_overrides
    from tests.fakes.fake_cluster import FakeWorld, fake_node

    settings = load_settings(environ={}, overrides={
        "supervisor_id": "logs", "cluster.docker_host": "unix:///fake", "cluster.image": "sha256:fake",
        "cluster.poll_interval": 0.1, "journal.path": ":memory:", "jobs.warm_per_device": 0,  # cold: env at create
        **security_overrides()})
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1, 1)], nursery)
        async with open_supervisor(settings, backends=world.backends(), serve_rpc=False) as sup:
            with trio.fail_after(30):
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.1)
            yield sup, world
        nursery.cancel_scope.cancel()


async def test_a_jobs_actor_logs_with_its_trace_id_and_the_container_gets_it(autojump_clock):
    envs: list[dict[str, str]] = []
    with captured("json", logger="cumulus") as stream:
        async with fake_cluster() as (sup, world):
            run_container = world.run_container

            async def spy(container):  # its env as it ran its job (a warm or early one gets it with the job)
                try:
                    await run_container(container)
                finally:
                    if container.job_id in (given.job_id, made.job_id):
                        envs.append(dict(container.env))

            world.run_container = spy
            given = await sup.submit(JobSpec(package=b"zip", gpu=0.5, duration=600, trace_id=TRACE,
                                             env={"FAKE_RUNTIME": "1"}))
            made = await sup.submit(JobSpec(package=b"zip", gpu=0.5, duration=600, env={"FAKE_RUNTIME": "1"}))
            with trio.fail_after(60):
                await given.torn_down.wait()
                await made.torn_down.wait()
    assert given.spec.trace_id == TRACE
    assert is_trace_id(made.spec.trace_id) and made.spec.trace_id != TRACE  # the cluster made one
    assert sorted(env["CUMULUS_TRACE_ID"] for env in envs) == sorted([TRACE, made.spec.trace_id])
    lines = [line for line in json_lines(stream) if line.get("job_id") == given.job_id]
    messages = [line["message"] for line in lines]
    assert any("accepted" in m for m in messages) and any("ended COMPLETED" in m for m in messages), messages
    assert all(line["trace_id"] == TRACE for line in lines)
    ended = next(line for line in lines if "ended COMPLETED" in line["message"])
    assert ended["worker"] == given.placement.worker and ended["attempt"] == 1


@pytest.mark.parametrize("format", ["text", "json"])
def test_configure_logging_is_idempotent(format):
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    saved = root.level, [(h, h.formatter, list(h.filters)) for h in root.handlers]
    root.addHandler(handler)
    try:
        configure_logging("INFO", format)
        configure_logging("INFO", format)
        assert sum(isinstance(f, JobContextFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for other, formatter, filters in saved[1]:
            other.setFormatter(formatter)
            other.filters[:] = filters
