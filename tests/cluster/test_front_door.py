"""The front door, end to end: a REAL ``cumulus supervisor`` process (``supervisor_process.remote_supervisor``) on
the real local cluster, driven only the way users drive it - the SDK (``@remote``, ``CumulusClient``, ``JobRef``)
and the ``cumulus`` CLI in subprocesses, always with an explicit address.

Covered: results (closure, helper from a local module, dataclass argument), logs streamed before the result,
remote exceptions re-raised with their traceback, cancel (SDK and CLI) leaving nothing behind, re-attaching
from a new client after the submitting one went away, the worker listing across a node's death and revival, and
the CLI's submit/status/jobs/logs. The node kill test runs last (it disturbs the cluster for everyone).

Known product bug, left failing on purpose: ``test_a_failure_reaches_the_caller_as_promptly_as_a_result`` (a
failed job's outcome waits out the 2 s log drain because the end-of-job marker only matches "job finished").
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import pytest

import cumulus
from cumulus.client.packaging import RemoteTraceback
from cumulus.errors import CumulusError

from helpers import holder_processes
from supervisor_process import remote_supervisor  # noqa: F401  (the module-scoped fixture)

JOB_TIMEOUT = 60


# ------------------------------------------------------------------------------------------ job functions
def add(a, b):
    print("adding", a, b, flush=True)
    return a + b


def fails(x):
    raise ValueError(f"bad value {x}")


FAILS_LINE = fails.__code__.co_firstlineno + 1


def talk_slowly():
    import time

    print("first line", flush=True)
    time.sleep(2)
    print("second line", flush=True)
    return "done talking"


def sleeper(seconds, value=None):
    import time

    print("sleeping", seconds, flush=True)
    time.sleep(seconds)
    return value


@dataclass(frozen=True)
class Point:
    x: float
    y: float

    def norm1(self) -> float:
        return abs(self.x) + abs(self.y)


def scale(p: Point, k: float) -> Point:
    return Point(p.x * k, p.y * k)


# --------------------------------------------------------------------------------------------------- helpers
def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_running(client, job_id: str, timeout: float = 30.0) -> None:
    def running():
        info = client.status(job_id)
        assert info.state in ("QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING"), (info.state, info.reason)
        return info.state == "RUNNING"

    wait_for(running, timeout, f"{job_id} RUNNING")


@pytest.fixture
def sup(remote_supervisor):
    assert remote_supervisor.alive(), remote_supervisor.log_tail()
    return remote_supervisor


@pytest.fixture
def client(sup):
    with sup.client() as c:
        yield c


# -------------------------------------------------------------------------------------------- results (SDK)
def test_remote_add_closure_local_module_and_dataclass(sup, tmp_path, monkeypatch):
    opts = {"address": sup.address, "log_to_driver": False, "gpu": 0.25}
    started = time.monotonic()

    # plain @remote
    remote_add = cumulus.remote(**opts)(add)
    assert remote_add(2, 2) == 4  # a plain call runs here
    ref = remote_add.remote(2, 2)
    assert cumulus.get(ref, timeout=JOB_TIMEOUT) == 4
    assert ref.state == "COMPLETED" and ref.client.address == sup.address
    plain = time.monotonic() - started

    # a closure over local variables (pickled by value, with what it captured)
    offset, factor = 10, 3

    @cumulus.remote(**opts)
    def shifted(x):
        return x * factor + offset

    # a helper from a local module (its own project dir, imported through sys.path): shipped by value and as
    # source, both for a job function defined in that project and for one defined here with project_root
    project = tmp_path / "fdproj"
    project.mkdir()
    suffix = sys.modules[__name__].__name__.replace(".", "_")
    helper_name, jobs_name = f"fd_helper_{suffix}", f"fd_jobs_{suffix}"
    (project / f"{helper_name}.py").write_text(textwrap.dedent("""
        GREETING = "hello from the helper"

        def triple(x):
            return 3 * x
    """))
    (project / f"{jobs_name}.py").write_text(textwrap.dedent(f"""
        from {helper_name} import GREETING, triple

        def use_helper(x):
            import importlib
            # the helper must also be importable by name on the worker (shipped under src/)
            mod = importlib.import_module("{helper_name}")
            return triple(x), GREETING, mod.triple(1)
    """))
    monkeypatch.syspath_prepend(str(project))
    helper = importlib.import_module(helper_name)
    jobs = importlib.import_module(jobs_name)

    def uses_imported_helper(x):
        return helper.triple(x) + 1

    # a dataclass argument (and result)
    p = Point(1.5, -2.0)

    refs = [
        shifted.remote(4),
        cumulus.remote(**opts)(jobs.use_helper).remote(5),
        cumulus.remote(**opts, project_root=str(project))(uses_imported_helper).remote(7),
        cumulus.remote(**opts)(scale).remote(p, 2),
        cumulus.remote(**opts)(Point.norm1).remote(p),
    ]
    values = cumulus.get(refs, timeout=JOB_TIMEOUT)
    assert values[0] == 22
    assert values[1] == (15, "hello from the helper", 3)
    assert values[2] == 22
    scaled = values[3]
    assert (type(scaled).__name__, scaled.x, scaled.y) == ("Point", 3.0, -4.0)
    assert scaled == Point(3.0, -4.0), f"the returned dataclass is not this module's Point: {type(scaled)!r}"
    assert values[4] == 3.5
    print(f"front door: plain job {plain:.2f} s, five more in parallel {time.monotonic() - started - plain:.2f} s")
    sup.assert_nothing_left([ref.job_id] + [r.job_id for r in refs],
                            expect={r.job_id: "COMPLETED" for r in [ref, *refs]})


# ------------------------------------------------------------------------------------------------- logs
def test_logs_reach_the_caller_before_the_result(sup, capsys):
    seen: list[tuple[float, str, str]] = []  # (monotonic arrival, kind, text) on the submitting stream
    followed: list[tuple[float, str]] = []  # (monotonic arrival, line) on a second client's WatchJob
    client = sup.client(log_to_driver=True)

    def on_event(update):
        if update.kind != "log" or update.stream == "stdout":  # the runner's own "[cumulus] ..." go to stderr
            seen.append((time.monotonic(), update.kind, update.text))

    ref = client.submit_call(talk_slowly, on_event=on_event)

    def follow():
        with sup.client() as other:
            for line in other.job(ref.job_id).logs(follow=True):
                followed.append((time.monotonic(), line))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        assert ref.result(JOB_TIMEOUT) == "done talking"
        returned = time.monotonic()
        follower.join(30)
        assert not follower.is_alive(), "logs(follow=True) did not end with the job"
    finally:
        client.close()

    logs = [(t, text) for t, kind, text in seen if kind == "log"]
    assert [text for _, text in logs] == ["first line", "second line"], seen
    result_at = next(t for t, kind, _ in seen if kind == "result")
    lead = result_at - logs[0][0]
    assert lead >= 1.0, f"the first line arrived only {lead:.2f} s before the result: {seen}"
    assert returned - logs[0][0] >= 1.0
    followed = [(t, line) for t, line in followed if not line.startswith("[cumulus] ")]
    assert [line for _, line in followed] == ["first line", "second line"], followed
    follow_lead = result_at - followed[0][0]
    assert follow_lead >= 1.0, f"WatchJob: first line only {follow_lead:.2f} s before the result"
    out = capsys.readouterr().out
    assert f"(job {ref.job_id}) first line" in out and f"(job {ref.job_id}) second line" in out
    print(f"front door: first line {lead:.2f} s before the result (WatchJob follower: {follow_lead:.2f} s)")


# ---------------------------------------------------------------------------------------------- exceptions
def test_remote_value_error_is_raised_with_its_traceback(sup):
    remote_fails = cumulus.remote(address=sup.address, log_to_driver=False, gpu=0.25)(fails)
    ref = remote_fails.remote(42)
    with pytest.raises(ValueError, match="bad value 42") as info:
        ref.result(JOB_TIMEOUT)
    assert type(info.value) is ValueError
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    text = str(cause)
    assert f"line {FAILS_LINE}, in fails" in text, text
    assert "ValueError: bad value 42" in text, text
    assert ref.state == "FAILED"
    info_ = ref.status()
    assert info_.state == "FAILED" and info_.reason == "user_exception" and info_.has_result
    sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "FAILED"})


def test_a_failure_reaches_the_caller_as_promptly_as_a_result(sup, client):
    """The runner's last lines (its stdout end marker and "[cumulus] job finished|failed in X s" on stderr) tell
    the supervisor that every line has been relayed; the outcome should follow within teardown time (~0.5 s
    here), for a raise as for a return."""
    lags = {}
    for func, args in ((add, (1, 2)), (fails, (1,))):
        events: list[tuple[float, str, str]] = []
        ref = client.submit_call(func, args, gpu=0.25,
                                 on_event=lambda u, ev=events: ev.append((time.monotonic(), u.kind, u.text)))
        with pytest.raises(ValueError) if func is fails else contextlib.nullcontext():
            ref.result(JOB_TIMEOUT)
        last_line = max(t for t, kind, _ in events if kind == "log")
        outcome = next(t for t, kind, _ in events if kind == "result")
        lags[func.__name__] = outcome - last_line
        last_text = [text for _, kind, text in events if kind == "log"][-1]
        assert re.fullmatch(r"\[cumulus\] job (finished|failed) in [0-9.]+ s", last_text), last_text
    print("front door: outcome after the runner's last line: " + ", ".join(f"{k} {v:.2f} s" for k, v in lags.items()))
    assert lags["add"] < 1.5, lags
    assert lags["fails"] < 1.5, f"a failed job's outcome came {lags['fails']:.2f} s after its last line: {lags}"


# ---------------------------------------------------------------------------------------------- cancel
def test_jobref_cancel_leaves_nothing(sup, client):
    ref = client.submit(sleeper, 60, gpu=0.25)
    wait_running(client, ref.job_id)
    live = client.status(ref.job_id)
    assert live.partition_id.startswith("partition_") and live.service_id and live.worker, live
    assert holder_processes([ref.job_id]), "a RUNNING job has a partition holder"
    started = time.monotonic()
    report = ref.cancel()
    took = time.monotonic() - started
    assert report.was_running and report.state == "CANCELLED", report
    assert not report.leaked and "service" in report.released and "partition" in report.released, report
    with pytest.raises(cumulus.JobCancelled):
        ref.result(10)
    print(f"front door: JobRef.cancel() of a RUNNING job returned in {took:.2f} s")
    # cancel returns once the job is torn down: its event stream ends at once
    sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "CANCELLED"}, teardown_timeout=2)


# ------------------------------------------------------------------------------------------- re-attach
def test_new_client_gets_the_result_after_the_submitter_disconnected(sup):
    submitter = sup.client()
    ref = submitter.submit(sleeper, 2, "late value", gpu=0.25)
    job_id = ref.job_id
    wait_for(lambda: ref.state == "RUNNING", 30, f"{job_id} RUNNING on the submitting stream", 0.05)
    submitter.close()  # the submitting client goes away mid-job
    with pytest.raises(CumulusError, match="closed"):
        ref.result(10)

    with sup.client() as fresh:
        again = fresh.job(job_id)
        assert again.result(JOB_TIMEOUT) == "late value"
        info = fresh.status(job_id)
    assert info.state == "COMPLETED" and info.has_result, info  # disconnecting did not cancel it
    sup.assert_nothing_left([job_id], expect={job_id: "COMPLETED"})


# ------------------------------------------------------------------------------------------------ CLI
JOBFILE = """
import time

def mul(a, b):
    print("multiplying", a, b, flush=True)
    return a * b

def slow():
    print("slow start", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def jobfile(tmp_path):
    path = tmp_path / "fdjob.py"
    path.write_text(JOBFILE)
    return path


def test_cli_submit_status_jobs_logs(sup, jobfile):
    res = sup.cli("submit", f"{jobfile}:mul", "--arg", "2", "--arg", "3", "--gpu", "0.25", check_rc=0)
    m = re.search(r"job (\S+) submitted to (\S+)", res.stderr)
    assert m and m.group(2) == sup.address, res.stderr
    job_id = m.group(1)
    assert job_id.startswith(sup.sid + "-"), job_id
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "6" and "multiplying 2 3" in lines, res.stdout

    res = sup.cli("status", job_id, check_rc=0)
    assert job_id in res.stdout and re.search(r"^state:\s+COMPLETED$", res.stdout, re.M), res.stdout
    assert re.search(r"^result:\s+yes$", res.stdout, re.M), res.stdout
    status = json.loads(sup.cli("status", job_id, "--json", check_rc=0).stdout)
    assert status["state"] == "COMPLETED" and status["has_result"] and not status["leaked"], status

    jobs = json.loads(sup.cli("jobs", "--json", "-a", check_rc=0).stdout)
    assert job_id in [j["job_id"] for j in jobs]
    active = json.loads(sup.cli("jobs", "--json", check_rc=0).stdout)
    assert job_id not in [j["job_id"] for j in active]  # finished: only with -a

    res = sup.cli("logs", job_id, check_rc=0)
    assert res.stdout.splitlines() == ["multiplying 2 3"], res.stdout
    sup.assert_nothing_left([job_id], expect={job_id: "COMPLETED"})


def test_cli_cancel_leaves_nothing(sup, client, jobfile):
    res = sup.cli("submit", f"{jobfile}:slow", "--detach", "--gpu", "0.25", check_rc=0)
    job_id = res.stdout.strip()
    assert re.fullmatch(rf"{re.escape(sup.sid)}-\w+", job_id), res.stdout
    wait_running(client, job_id)
    live = client.status(job_id)
    assert live.partition_id.startswith("partition_") and live.service_id and live.worker, live
    assert holder_processes([job_id]), "a RUNNING job has a partition holder"

    active = json.loads(sup.cli("jobs", "--json", check_rc=0).stdout)
    assert [j["state"] for j in active if j["job_id"] == job_id] == ["RUNNING"], active
    wait_for(lambda: "slow start" in sup.cli("logs", job_id, check_rc=0).stdout, 20, "the first log line")

    res = sup.cli("cancel", job_id, check_rc=0)
    assert f"job {job_id} cancelled" in res.stdout and "service" in res.stdout, res
    sup.assert_nothing_left([job_id], expect={job_id: "CANCELLED"}, teardown_timeout=2)

    res = sup.cli("logs", job_id, "-f", check_rc=1)  # followed to the end: the job was cancelled
    assert "slow start" in res.stdout
    assert json.loads(sup.cli("status", job_id, "--json", check_rc=0).stdout)["state"] == "CANCELLED"
    res = sup.cli("cancel", job_id, check_rc=0)
    assert "was already CANCELLED" in res.stdout, res.stdout


# -------------------------------------------------------------------------------------------- workers
KILLED_INDEX = 2


def _by_host(workers) -> dict:
    return {w.hostname: w for w in workers}


def test_zz_workers_listing_across_kill_and_revive(sup, client, cluster):
    from cumulus.local import cluster as lc

    hostnames = sorted(sup.worker_hostnames)
    victim = next(n["hostname"] for n in cluster["nodes"] if n.get("index") == KILLED_INDEX)
    survivors = [h for h in hostnames if h != victim]

    workers = _by_host(client.list_workers())
    assert sorted(workers) == hostnames
    for w in workers.values():
        assert w.healthy and w.state == "ready" and w.running_jobs == 0, w
        assert w.devices and all(d.free_share == 1.0 and d.used_share == 0.0 for d in w.devices), w
        assert all(d.is_gpu is False for d in w.devices)  # the local cluster's PoCL CPU devices
    listed = json.loads(sup.cli("workers", "--json", check_rc=0).stdout)
    assert sorted(w["hostname"] for w in listed) == hostnames
    assert all(w["healthy"] and w["devices"] and w["devices"][0]["free_share"] == 1.0 for w in listed), listed
    table = sup.cli("workers", check_rc=0).stdout
    assert table.startswith("WORKER") and all(h in table for h in hostnames), table

    timings = {}
    victim_shown = "?"
    try:
        started = time.monotonic()
        sup.cli("local", "kill-node", str(KILLED_INDEX), address=False, check_rc=0)
        timings["kill-node"] = time.monotonic() - started

        def victim_down():
            seen = _by_host(client.list_workers())
            return (victim not in seen or not seen[victim].healthy) and seen

        seen = wait_for(victim_down, 30, f"{victim} unhealthy or gone", 0.2)
        timings["unhealthy after kill"] = time.monotonic() - started
        victim_shown = f"{seen[victim].state} ({seen[victim].reason})" if victim in seen else "not listed"
        if victim in seen:
            assert seen[victim].state in ("down", "unreachable") and seen[victim].reason, seen[victim]
        assert all(seen[h].healthy for h in survivors), seen
        listed = {w["hostname"]: w for w in json.loads(sup.cli("workers", "--json", check_rc=0).stdout)}
        assert victim not in listed or not listed[victim]["healthy"], listed
        assert all(listed[h]["healthy"] for h in survivors), listed
        table = sup.cli("workers", check_rc=0).stdout
        assert victim not in table or re.search(rf"^{victim}\s+(down|unreachable)", table, re.M), table
    finally:
        started = time.monotonic()
        res = sup.cli("local", "revive-node", str(KILLED_INDEX), address=False)
        if res.returncode != 0:  # never leave the cluster with a dead node
            lc.revive_node(KILLED_INDEX, wait=True, timeout=90, quiet=True)
        timings["revive-node"] = time.monotonic() - started
    assert res.returncode == 0, res

    sup.wait_workers(hostnames, timeout=45)
    timings["healthy after revive"] = time.monotonic() - started
    workers = _by_host(client.list_workers())
    assert all(w.healthy and w.devices[0].free_share == 1.0 for w in workers.values()), workers
    listed = json.loads(sup.cli("workers", "--json", check_rc=0).stdout)
    assert all(w["healthy"] for w in listed) and sorted(w["hostname"] for w in listed) == hostnames, listed
    # and it takes jobs again: a whole device on each worker needs both
    refs = [client.submit(sleeper, 0.5, h, gpu=1) for h in hostnames]
    assert cumulus.get(refs, timeout=JOB_TIMEOUT) == hostnames
    assert sorted(r.status().worker for r in refs) == hostnames
    print(f"front door: killed {victim} shown {victim_shown}; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    sup.assert_nothing_left([r.job_id for r in refs], expect={r.job_id: "COMPLETED" for r in refs})

