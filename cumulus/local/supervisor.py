"""The local cluster's supervisor: a `cumulus supervisor` process in the background, started by `local up`.

Its settings are written to ``<state>/supervisor.yaml`` (the cluster description, non-GPU devices allowed, because
a machine without a GPU only has PoCL's CPU device; TLS with the local CA's certificate, tokens on, the admin
token from :mod:`cumulus.local.credentials`; the HTTP port on the bridge, 10.213.0.1:50052, advertised to joining
hosts, and the CA they are given; a renewed server certificate changes the file, so the supervisor restarts);
its address and pid to ``<state>/supervisor.json``, and the client config (address, CA, admin token) to the
invoking user's ``~/.config/cumulus/config.yaml`` (also root's when run with sudo), which the CLI and SDK read.
`local up` on a cluster whose supervisor died starts a new one with the same settings and journal;
`local down` stops it first (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cumulus.local import state
from cumulus.local.credentials import LocalCredentials, client_settings, ensure_credentials
from cumulus.local.util import LocalClusterError

ADDRESS = os.environ.get("CUMULUS_LOCAL_ADDRESS", "127.0.0.1:50051")
# The HTTP port (/metrics, the join script, the image registry) on the bridge: the nodes reach it there, and so
# does this machine; it is what `cumulus worker join-command` puts in the join line.
HTTP_ADDRESS = f"{state.BRIDGE_ADDR}:50052"
SUPERVISOR_ID = "local"


def config_path():
    return state.STATE_DIR / "supervisor.yaml"


def info_path():
    return state.STATE_DIR / "supervisor.json"


def log_path():
    return state.STATE_DIR / "supervisor.log"


def read_info() -> dict[str, Any] | None:
    try:
        return json.loads(info_path().read_text())
    except (OSError, ValueError):
        return None


def running_pid() -> int | None:
    """The pid of the local supervisor if it runs (and is ours), else None. Found by its info file, or by its
    command line (a `local up` killed right after starting it had no time to write the info file)."""
    info = read_info()
    pid = int(info.get("pid", 0)) if info else 0
    if pid > 0 and _is_ours(pid):
        return pid
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _is_ours(int(entry)):
            return int(entry)
    return None


def _is_ours(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return False
    return b"supervisor" in cmdline and str(config_path()).encode() in cmdline


def credentials() -> LocalCredentials:
    creds, _ = ensure_credentials(state.STATE_DIR)
    return creds


def healthy(address: str = ADDRESS, timeout: float = 2.0) -> bool:
    from cumulus.client.connection import ClientConfig
    from cumulus.client.health import check_health

    creds = credentials()
    ok, _ = check_health(timeout=timeout, config=ClientConfig(address, creds.admin_token, str(creds.ca)))
    return ok


def write_client_configs(creds: LocalCredentials, address: str = ADDRESS) -> str:
    """The client config for root and, under sudo, for the user who ran sudo (owned by them)."""
    from cumulus.client.connection import config_path, write_client_config

    settings = client_settings(creds, address)
    written = []
    targets: list[tuple[Path, tuple[int, int] | None]] = [(config_path(), None)]
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and sudo_user != "root":
        try:
            user = pwd.getpwnam(sudo_user)
            home_env = {"HOME": user.pw_dir}
            targets.append((config_path(home_env), (user.pw_uid, user.pw_gid)))
        except KeyError:
            pass
    for path, owner in targets:
        write_client_config(path, settings, owner=owner)
        written.append(str(path))
    return ", ".join(written)


def write_config() -> bool:
    creds = credentials()
    try:  # a new description (a rebuilt image) changes this file, so the supervisor is restarted with it
        described = hashlib.sha256(state.CLUSTER_JSON.read_bytes()).hexdigest()[:16]
    except OSError:
        described = "none"
    text = (
        "# Written by `cumulus local up`: the supervisor of the local cluster.\n"
        f"# cluster description {described}\n"
        f"supervisor_id: {SUPERVISOR_ID}\n"
        f"grpc:\n  listen: \"{ADDRESS}\"\n"
        f"server:\n  http_listen: \"{HTTP_ADDRESS}\"\n  http_advertise: \"{HTTP_ADDRESS}\"\n"
        f"security:\n  tls_cert: \"{creds.server_cert}\"\n  tls_key: \"{creds.server_key}\"\n"
        f"  tls_ca: \"{creds.ca}\"\n"
        f"  # server certificate {hashlib.sha256(creds.server_cert.read_bytes()).hexdigest()[:16]} (renewed: restart)\n"
        f"  admin_token_file: \"{creds.admin_token_file}\"\n"
        f"  # admin token {hashlib.sha256(creds.admin_token_file.read_bytes()).hexdigest()[:16]} (replaced: restart)\n"
        f"cluster:\n  description: \"{state.CLUSTER_JSON}\"\n"
        "  allow_non_gpu_devices: true   # this machine has no GPU: jobs use the CPU OpenCL device\n"
        "  poll_interval: 0.1\n"
        f"journal:\n  path: \"{state.STATE_DIR / 'journal.sqlite3'}\"\n"
    )
    path = config_path()
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def ensure_running(timeout: float = 60.0) -> str:
    """Start the supervisor unless it already runs and serves; returns a note for the progress line."""
    changed = write_config()
    write_client_configs(credentials())
    pid = running_pid()
    if pid and not changed and healthy():
        return f"running (pid {pid}, {ADDRESS})"
    if pid:
        stop()
    with open(log_path(), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cumulus", "supervisor", "--config", str(config_path())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/",
        )
    state.write_json(info_path(), {"pid": proc.pid, "address": ADDRESS, "config": str(config_path()),
                                   "log": str(log_path())})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalClusterError(f"the local supervisor exited with status {proc.returncode}; see {log_path()}")
        if healthy(timeout=1.0):
            return f"started (pid {proc.pid}, {ADDRESS})"
        time.sleep(0.2)
    raise LocalClusterError(f"the local supervisor did not answer within {timeout:g} s; see {log_path()}")


def stop(timeout: float = 10.0) -> str:
    pid = running_pid()
    if not pid:
        return "not running"
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and running_pid() == pid:
            time.sleep(0.1)
        if running_pid() != pid:
            break
    return f"stopped pid {pid}"


def status() -> dict[str, Any]:
    pid = running_pid()
    info = read_info() or {}
    return {"supervisor_pid": pid, "supervisor_address": info.get("address", ADDRESS),
            "supervisor_serving": bool(pid) and healthy(info.get("address", ADDRESS), timeout=1.0)}
