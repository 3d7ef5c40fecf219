"""`cumulus supervisor` as a real process: serves HealthCheck over gRPC and stops cleanly on signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.credentials import run_credentials

CUMULUS = [sys.executable, "-m", "cumulus"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cumulus(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*CUMULUS, *args], capture_output=True, text=True, timeout=timeout)


def security_flags() -> list[str]:
    creds = run_credentials()
    return ["--tls-cert", str(creds.server_cert), "--tls-key", str(creds.server_key),
            "--admin-token-file", str(creds.admin_token_file)]


def test_a_supervisor_without_a_certificate_refuses_to_start_unless_insecure(tmp_path):
    result = cumulus("supervisor", "--listen", f"127.0.0.1:{free_port()}", "--http-listen", "127.0.0.1:0")
    assert result.returncode == 2 and "TLS is on by default" in result.stderr and "--insecure" in result.stderr


@pytest.fixture
def supervisor_process(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "CUMULUS_JOURNAL_PATH": str(tmp_path / "journal.sqlite3")}
    proc = subprocess.Popen(
        [*CUMULUS, "supervisor", "--listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0", *security_flags()],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cumulus("health", "--address", address, "--timeout", "1").returncode == 0:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    yield proc, address
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_supervisor_serves_health_and_stops_cleanly_on_signal(supervisor_process, signum):
    proc, address = supervisor_process
    result = cumulus("health", "--address", address)
    assert result.returncode == 0 and result.stdout.startswith("SERVING (cumulus "), result.stdout
    started = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 2.0
    _, stderr = proc.communicate()
    assert "supervisor stopped" in stderr


def test_health_without_a_supervisor_says_why_and_exits_1():
    result = cumulus("health", "--address", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 1
    assert "no supervisor reachable" in result.stdout


def test_second_supervisor_on_the_same_port_fails_with_a_clear_message(supervisor_process):
    _, address = supervisor_process
    result = cumulus("supervisor", "--listen", address, "--http-listen", "127.0.0.1:0", *security_flags())
    assert result.returncode == 1
    assert f"cannot listen on {address}" in result.stderr


def test_bad_settings_are_refused_with_the_key_name(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("grpc:\n  listen: 127.0.0.1\n")
    result = cumulus("supervisor", "--config", str(config))
    assert result.returncode == 2
    assert "grpc.listen" in result.stderr and "HOST:PORT" in result.stderr


def test_version():
    result = cumulus("--version")
    assert result.returncode == 0 and result.stdout.startswith("cumulus ")


def test_ssh_channel_chatter_is_kept_out_of_the_supervisor_log_unless_debugging():
    import logging

    from cumulus.process import configure_logging

    try:
        configure_logging("INFO")
        assert not logging.getLogger("asyncssh").isEnabledFor(logging.INFO)
        assert logging.getLogger("asyncssh").isEnabledFor(logging.WARNING)
        assert logging.getLogger("cumulus.actors.job").isEnabledFor(logging.INFO)
        configure_logging("DEBUG")
        assert logging.getLogger("asyncssh.sftp").isEnabledFor(logging.DEBUG)
    finally:
        for name in ("", "asyncssh", "asyncssh.sftp"):
            logging.getLogger(name).setLevel(logging.NOTSET if name else logging.WARNING)
