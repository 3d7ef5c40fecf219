"""The runner of a warm service, as a real process: it waits on its FIFO without running anything, takes the job's
env from the start message, runs exactly that one job, and refuses a message that is not one. And every runner
holds the running lock the supervisor takes on the node to know that a stopped job's processes are gone."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cumulus.client import packaging as pk
from cumulus.resources.warm import FIFO_NAME, start_message

RUNNER = Path(__file__).resolve().parents[1] / "worker_image" / "image" / "runner.py"


def env_value(name):
    import os

    return os.environ.get(name)


def start_warm_runner(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    code, out = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    out.mkdir()
    os.mkfifo(code / FIFO_NAME, 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    env.update({"CUMULUS_CODE_DIR": str(code), "CUMULUS_OUTPUT_DIR": str(out), "CUMULUS_WARM": "1",
                "CUMULUS_JOB_ID": "warm-placeholder"})
    proc = subprocess.Popen([sys.executable, str(RUNNER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(tmp_path))
    return proc, code, out


def locked(path: Path) -> bool:
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_warm_runner_waits_then_runs_its_one_job_with_the_jobs_env(tmp_path):
    proc, code, out = start_warm_runner(tmp_path)
    try:
        wait_for(lambda: (out / ".running").exists())
        time.sleep(0.5)
        assert proc.poll() is None and not (out / "result.msgpack").exists()  # waiting, nothing run
        assert locked(out / ".running")
        (code / "package.zip").write_bytes(pk.build_package(env_value, ("CUMULUS_JOB_ID",)))
        with open(code / FIFO_NAME, "wb") as fifo:  # as the supervisor's writer: blocks until the runner reads
            fifo.write(start_message({"CUMULUS_JOB_ID": "sup-0123456789ab", "CUMULUS_PARTITION_ID": "p1"}))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    outcome = pk.decode_result((out / "result.msgpack").read_bytes())
    assert outcome.ok and outcome.value == "sup-0123456789ab"
    assert not (out / ".running").exists()  # removed at the end; its lock went with the process


@pytest.mark.parametrize("message", [b"", b"go", b'{"env": {"A": 1}}', json.dumps({"env": []}).encode()])
def test_a_message_that_is_not_a_start_message_runs_nothing(tmp_path, message):
    proc, code, out = start_warm_runner(tmp_path)
    try:
        (code / "package.zip").write_bytes(pk.build_package(env_value, ("HOME",)))
        with open(code / FIFO_NAME, "wb") as fifo:
            fifo.write(message)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "no job to run" in stderr
    assert not (out / "result.msgpack").exists()


def test_a_start_message_too_big_for_the_command_line_is_refused():
    assert start_message({"BIG": "x" * 70_000}) is None
    assert start_message({"SMALL": "x"}) == b'{"env":{"SMALL":"x"}}'


def test_the_running_lock_is_held_while_a_job_runs(tmp_path):
    code, out = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    out.mkdir()

    def sleeps():
        import time

        time.sleep(1.5)
        return 1

    (code / "package.zip").write_bytes(pk.build_package(sleeps, ()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    env.update({"CUMULUS_CODE_DIR": str(code), "CUMULUS_OUTPUT_DIR": str(out)})
    proc = subprocess.Popen([sys.executable, str(RUNNER)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (out / ".running").exists())
        lock = out / ".running"
        assert locked(lock)
        proc.kill()  # as the lease watchdog's SIGKILL: the lock goes with the process
        proc.wait(10)
        assert not locked(lock)
    finally:
        proc.kill()
