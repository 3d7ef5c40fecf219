"""`cumulus pause` and `cumulus resume` against a real gRPC server backed by FakeSupervisorApi (the real runner and
in-job checkpoint API in a subprocess): their output in both formats, their exit status, and their usage errors."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from cumulus.cli import main
from tests.fakes.fake_api import running_fake_server


@pytest.fixture(scope="module")
def server():
    with running_fake_server() as srv:
        yield srv


@pytest.fixture()
def jobfile(tmp_path):
    path = tmp_path / "trainjob.py"
    path.write_text(textwrap.dedent("""
        import time
        import cumulus

        def train(steps):
            state = cumulus.checkpoint.load() or {"done": 0}
            while state["done"] < steps:
                time.sleep(0.05)
                state["done"] += 1
                cumulus.checkpoint.save(state, step=state["done"] - 1)
                if cumulus.should_pause():
                    return None
            return state["done"]

        def short():
            time.sleep(1)  # never asks should_pause(): it finishes within its grace period
            return "done"
    """))
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def state_of(server, job_id: str) -> str:
    return server.api.jobs[job_id].record.state.value


def wait_until(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def submitted(capsys, server, target: str, *args: str) -> str:
    """Submit ``target`` detached; its job id, once it is RUNNING (and, for train, has saved a checkpoint)."""
    code, out, err = run(capsys, "submit", target, *args, "--detach", "--address", server.address)
    assert code == 0, err
    job_id = out.strip()
    wait_until(lambda: state_of(server, job_id) == "RUNNING", "RUNNING state")
    if target.endswith(":train"):
        wait_until(lambda: server.api.jobs[job_id].record.checkpoint_step is not None, "checkpoint")
    return job_id


def test_pause_and_resume_say_what_happened(server, jobfile, capsys):
    a = ("--address", server.address)
    job_id = submitted(capsys, server, f"{jobfile}:train", "--arg", "60")
    code, out, err = run(capsys, "pause", job_id, *a)
    assert code == 0, err
    step = server.api.jobs[job_id].record.checkpoint_step
    assert out.strip() == (f"job {job_id} paused at its checkpoint of step {step}; resume it with: "
                           f"cumulus resume {job_id}")
    assert state_of(server, job_id) == "PAUSED"
    code, out, err = run(capsys, "pause", job_id, *a)  # again: still paused, nothing more
    assert code == 0 and f"job {job_id} paused" in out, err
    code, out, err = run(capsys, "resume", job_id, *a)
    assert code == 0, err
    assert out.strip() == f"job {job_id} queued again, from its checkpoint of step {step}"
    code, out, err = run(capsys, "resume", job_id, *a)  # not PAUSED any more
    assert code == 1 and "not PAUSED" in err and job_id in err
    run(capsys, "cancel", job_id, *a)


def test_pause_with_grace_and_json_output(server, jobfile, capsys):
    a = ("--address", server.address)
    job_id = submitted(capsys, server, f"{jobfile}:train", "--arg", "60")
    code, out, err = run(capsys, "pause", job_id, "--grace", "5", "-o", "json", *a)
    assert code == 0, err
    data = json.loads(out)
    assert data == {"job_id": job_id, "was_running": True, "state": "PAUSED",
                    "checkpoint_step": server.api.jobs[job_id].record.checkpoint_step}
    assert list(data) == sorted(data) and data["checkpoint_step"] >= 0
    assert "asked to pause: it has 5 s to return" in [e.text for e in server.api.history[job_id]]  # --grace sent
    code, out, err = run(capsys, "resume", job_id, "--json", *a)
    assert code == 0, err
    info = json.loads(out)
    assert info["job_id"] == job_id and info["checkpoint_step"] == data["checkpoint_step"]
    assert info["state"] not in ("PAUSED", "COMPLETED", "FAILED", "CANCELLED") and info["attempt"] == 2
    wait_until(lambda: state_of(server, job_id) == "COMPLETED", "COMPLETED state", timeout=60)
    code, out, _ = run(capsys, "status", job_id, "--json", *a)
    assert json.loads(out)["state"] == "COMPLETED"


def test_a_job_that_ends_before_it_pauses_exits_1_saying_so(server, jobfile, capsys):
    a = ("--address", server.address)
    job_id = submitted(capsys, server, f"{jobfile}:short")
    code, out, err = run(capsys, "pause", job_id, "--grace", "30", *a)
    assert code == 1 and out == ""
    assert err.strip() == f"job {job_id} ended before it paused: COMPLETED"
    job_id = submitted(capsys, server, f"{jobfile}:short")
    code, out, err = run(capsys, "pause", job_id, "--grace", "30", "-o", "json", *a)
    assert code == 1
    assert json.loads(out) == {"job_id": job_id, "was_running": True, "state": "COMPLETED",
                               "checkpoint_step": None}
    code, out, err = run(capsys, "pause", job_id, *a)  # it has ended: refused
    assert code == 1 and "has ended" in err and "COMPLETED" in err


def test_usage_errors(server, capsys):
    a = ("--address", server.address)
    code, _, err = run(capsys, "pause", "some-job", "--grace", "-1", *a)
    assert code == 2 and "--grace -1" in err and "0 or more" in err
    for argv in (["pause"], ["resume"], ["pause", "some-job", "--grace", "soon"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, *a])
        assert info.value.code == 2, argv
    capsys.readouterr()
    for command in ("pause", "resume"):
        code, _, err = run(capsys, command, "no-such-job", *a)
        assert code == 1 and "no-such-job" in err, command
