"""`cumulus submit/status/cancel/logs/jobs/workers` against a real gRPC server backed by FakeSupervisorApi."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from cumulus.cli import main
from tests.fakes.fake_api import free_port, running_fake_server


@pytest.fixture(scope="module")
def server():
    with running_fake_server() as srv:
        yield srv


@pytest.fixture()
def jobfile(tmp_path):
    path = tmp_path / "myjob.py"
    path.write_text(textwrap.dedent("""
        import time
        import cumulus

        def add(a, b=0):
            print("adding", a, b)
            return a + b

        @cumulus.remote(gpu=0.25)
        def boom():
            raise RuntimeError("kaboom")

        def slow():
            print("slow start", flush=True)
            time.sleep(60)
    """))
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_streams_logs_and_prints_the_result(server, jobfile, capsys):
    code, out, err = run(capsys, "submit", f"{jobfile}:add", "--arg", "2", "--kwarg", "b=3", "--address",
                         server.address)
    assert code == 0, err
    assert "adding 2 3" in out and out.strip().splitlines()[-1] == "5"
    assert "submitted" in err


def test_submit_failure_exits_1_with_the_remote_traceback(server, jobfile, capsys):
    code, out, err = run(capsys, "submit", f"{jobfile}:boom", "--address", server.address)
    assert code == 1
    assert "RuntimeError: kaboom" in err and "in boom" in err


def test_detach_status_logs_cancel_jobs_workers(server, jobfile, capsys):
    a = ("--address", server.address)
    code, out, err = run(capsys, "submit", f"{jobfile}:slow", "--detach", "--gpu", "0.5", *a)
    assert code == 0, err
    job_id = out.strip()
    deadline = time.monotonic() + 30
    while server.api.jobs[job_id].record.state.value != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out, _ = run(capsys, "status", job_id, *a)
    assert code == 0 and "RUNNING" in out and "fake-w1 device 0" in out
    code, out, _ = run(capsys, "jobs", *a)
    assert code == 0 and job_id in out and out.startswith("JOB")
    code, out, _ = run(capsys, "jobs", "--json", "-a", *a)
    assert job_id in [j["job_id"] for j in json.loads(out)]
    time.sleep(0.5)
    code, out, _ = run(capsys, "logs", job_id, *a)
    assert code == 0 and "slow start" in out
    code, out, err = run(capsys, "cancel", job_id, *a)
    assert code == 0 and "cancelled" in out and "service" in out, err
    code, out, _ = run(capsys, "logs", job_id, "-f", *a)
    assert code == 1 and "slow start" in out  # followed to the end: the job was cancelled
    code, out, _ = run(capsys, "status", job_id, "--json", *a)
    assert json.loads(out)["state"] == "CANCELLED"
    code, out, _ = run(capsys, "workers", *a)
    assert code == 0 and "fake-w1" in out and "Fake GPU" in out and "down" in out
    code, out, _ = run(capsys, "workers", "--json", *a)
    assert {w["hostname"] for w in json.loads(out)} == {"fake-w1", "fake-w2"}


def test_errors_and_usage(server, jobfile, capsys):
    a = ("--address", server.address)
    code, _, err = run(capsys, "status", "no-such-job", *a)
    assert code == 1 and "no-such-job" in err
    code, _, err = run(capsys, "submit", f"{jobfile}:add", "--arg", "1", "--gpu", "2.3", *a)
    assert code == 1 and "0 < gpu <= 1" in err
    code, _, err = run(capsys, "submit", f"{jobfile}:nope", *a)
    assert code == 2 and "no 'nope'" in err
    code, _, err = run(capsys, "submit", f"{jobfile}:add", "--arg", "{bad json", *a)
    assert code == 2 and "not JSON" in err
    code, _, err = run(capsys, "submit", "nofile.py", *a)
    assert code == 2 and "FILE.py:FUNC" in err
    code, _, err = run(capsys, "jobs", "--address", f"127.0.0.1:{free_port()}")
    assert code == 1 and "no Cumulus supervisor reachable at 127.0.0.1:" in err
    with pytest.raises(SystemExit) as info:
        main(["submit"])
    assert info.value.code == 2
