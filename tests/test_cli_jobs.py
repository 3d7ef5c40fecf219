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


# ---- kubectl/ray habits: global flags anywhere, -o json, --state, --tail, health, describe ---------------------


def wait_state(server, job_id, state, timeout=30):
    deadline = time.monotonic() + timeout
    while server.api.jobs[job_id].record.state.value != state:
        assert time.monotonic() < deadline, f"{job_id} never became {state}"
        time.sleep(0.05)


@pytest.fixture()
def chatty(tmp_path):
    path = tmp_path / "chatty.py"
    path.write_text(textwrap.dedent("""
        import time

        def lines(n, late=0.0):
            for i in range(n):
                print(f"line {i}", flush=True)
            if late:
                time.sleep(late)
                print("late line", flush=True)
            return n
    """))
    return path


def test_global_flags_before_or_after_the_command(server, capsys):
    for argv in (["--address", server.address, "-o", "json", "workers"],
                 ["workers", "--address", server.address, "--json"],
                 ["-o", "table", "--address", "127.0.0.1:1", "workers", "-o", "json", "--address", server.address]):
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, err)
        assert {w["hostname"] for w in json.loads(out)} == {"fake-w1", "fake-w2"}


def test_submit_detach_json_and_jobs_by_state(server, chatty, capsys):
    code, out, err = run(capsys, "-o", "json", "submit", f"{chatty}:lines", "--arg", "3", "--detach",
                         "--address", server.address)
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    wait_state(server, job_id, "COMPLETED")
    code, out, _ = run(capsys, "jobs", "--state", "completed", "-o", "json", "--address", server.address)
    assert code == 0 and job_id in [j["job_id"] for j in json.loads(out)]
    assert {j["state"] for j in json.loads(out)} == {"COMPLETED"}
    code, out, _ = run(capsys, "jobs", "--state", "running,QUEUED", "--json", "--address", server.address)
    assert code == 0 and job_id not in [j["job_id"] for j in json.loads(out)]
    code, out, _ = run(capsys, "jobs", "--state", "Completed", "--limit", "1", "--address", server.address)
    assert code == 0 and out.startswith("JOB") and len(out.strip().splitlines()) == 2
    code, out, _ = run(capsys, "jobs", "--state", "CANCELLED", "--state", "failed", "--address", server.address)
    assert code == 0 and job_id not in out
    code, out, err = run(capsys, "-o", "json", "submit", f"{chatty}:lines", "--arg", "2", "--address",
                         server.address)
    data = json.loads(out)  # stdout is the JSON alone: the job's output went to stderr
    assert code == 0 and data["result"] == 2 and data["job_id"] and "line 1" in err


def finished_job(capsys, server, chatty, lines: int) -> str:
    """Submit chatty's ``lines(lines)`` detached through the CLI and wait until it completed; its id."""
    code, out, err = run(capsys, "submit", f"{chatty}:lines", "--arg", str(lines), "--detach",
                         "--address", server.address)
    assert code == 0, err
    job_id = out.strip()
    wait_state(server, job_id, "COMPLETED")
    return job_id


def test_logs_tail(server, chatty, capsys):
    a = ("--address", server.address)
    job_id = finished_job(capsys, server, chatty, 20)
    code, full_out, full_err = run(capsys, "logs", job_id, *a)
    assert code == 0 and full_out.splitlines()[:20] == [f"line {i}" for i in range(20)]
    total = len(full_out.splitlines()) + len(full_err.splitlines())  # the job's lines and the runner's markers
    for follow in ((), ("-f",)):  # -f of a finished job: the last lines, and nothing to follow
        code, out, err = run(capsys, "logs", job_id, "--tail", str(total - 17), *follow, *a)
        # the last total-17 lines of both streams (the runner's stderr lines may come anywhere among the job's)
        out_lines, err_lines = out.splitlines(), err.splitlines()
        assert code == 0 and len(out_lines) + len(err_lines) == total - 17
        assert out_lines == full_out.splitlines()[-len(out_lines):] and "line 19" in out_lines
        assert err_lines == full_err.splitlines()[len(full_err.splitlines()) - len(err_lines):]
        assert "line 0" not in out_lines and "line 1" not in out_lines
    code, out, err = run(capsys, "logs", job_id, "--tail", "0", *a)
    assert code == 0 and out == err == ""


def test_logs_tail_then_follow(server, chatty, capsys):
    a = ("--address", server.address)
    code, out, err = run(capsys, "submit", f"{chatty}:lines", "--arg", "10", "--kwarg", "late=3", "--detach", *a)
    job_id = out.strip()
    from cumulus.client.client import CumulusClient

    with CumulusClient(server.address, log_to_driver=False) as client:  # until its first 10 lines are out
        deadline = time.monotonic() + 30
        while "line 9" not in [u.text for u in client.watch(job_id, idle_timeout=0.2)]:
            assert time.monotonic() < deadline
    time.sleep(0.3)  # the late line comes 3 s after them
    code, out, err = run(capsys, "logs", job_id, "--tail", "4", "-f", *a)
    assert code == 0
    # The last 4 lines so far: the job's last ones, and the runner's stderr lines that came after them (the fake
    # relays the two streams as they come, and its markers); then the late line, live.
    lines = [line for line in out.splitlines() if not line.startswith("[cumulus]")]
    assert lines[-1] == "late line"
    early_err = [line for line in err.splitlines() if "job finished" not in line]
    old = lines[:-1]
    assert len(old) + len(early_err) == 4 and old == [f"line {i}" for i in range(10 - len(old), 10)], (out, err)


def test_health(server, capsys):
    from cumulus._version import __version__

    code, out, _ = run(capsys, "health", "--address", server.address)
    assert code == 0
    assert out.strip().startswith(f"SERVING (cumulus {__version__}, supervisor ")
    assert "workers ready" in out or "worker ready" in out
    code, out, _ = run(capsys, "-o", "json", "health", "--address", server.address)
    data = json.loads(out)
    assert code == 0 and data["serving"] and data["version"] == __version__ and data["workers_ready"] == 1
    assert list(data) == sorted(data)
    dead = f"127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "health", "--address", dead, "--timeout", "2")
    assert code == 1 and out.startswith(f"no supervisor reachable at {dead}: ")
    assert "`cumulus supervisor`" in out and "`cumulus local up`" in out and "CUMULUS_ADDRESS" in out
    code, out, err = run(capsys, "health", "--json", "--address", dead, "--timeout", "2")
    assert code == 1 and json.loads(out)["status"] == "UNREACHABLE" and "no supervisor reachable" in err


def test_describe(server, chatty, capsys):
    a = ("--address", server.address)
    job_id = finished_job(capsys, server, chatty, 1)
    code, out, err = run(capsys, "describe", job_id, *a)
    assert code == 0, err
    assert "Job:" in out and job_id in out and "Events:" in out and "COMPLETED" in out
    code, out, _ = run(capsys, "describe", job_id, "-o", "json", *a)
    data = json.loads(out)
    assert data["info"]["job_id"] == job_id and "state" in {e["kind"] for e in data["events"]}
    code, _, err = run(capsys, "describe", "no-such-job", *a)
    assert code == 1 and "no-such-job" in err
