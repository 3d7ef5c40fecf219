"""What the join tests do on the real local cluster, the way an operator does it: the ``cumulus`` CLI with the local
cluster's own client config (admin token), ``cumulus local add-node/exec/remove-node`` for the new host, the
manager's Swarm node list for "nothing changed", and the SDK for a job.

    node = add_node()                           # {"name": "cw3", "address": ..., "host_key_file": ...}
    line = join_line()                          # what `cumulus worker join-command` printed
    res = run_on(node, line)                    # `cumulus local exec cw3 -- bash -c "<line>"`
    snapshot = swarm_snapshot()                 # {node id: (hostname, spec with labels, role, availability)}
    forget(node)                                # `cumulus worker remove`, then `cumulus local remove-node`

The CLI is retried for a minute while no supervisor answers (other sessions restart the local supervisor).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "no Cumulus supervisor reachable"
JOIN_TIMEOUT = 600.0
WORKERS_TIMEOUT = 120.0


def local_client_config() -> Path:
    """The client config `cumulus local up` wrote for this user (the run's own CUMULUS_CONFIG set aside)."""
    from cumulus.client.connection import config_path

    return config_path({k: v for k, v in os.environ.items() if k != "CUMULUS_CONFIG"})


def local_state_dir() -> Path:
    from cumulus.local import state

    return state.STATE_DIR


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    env["CUMULUS_CONFIG"] = str(local_client_config())
    return env


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else "python3"


def cumulus(*args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``cumulus ARGS`` as the local cluster's admin; retried while no supervisor answers (a restart)."""
    deadline = time.monotonic() + 60
    while True:
        res = subprocess.run([python(), "-m", "cumulus", *args], env=cli_env(), capture_output=True, text=True,
                             timeout=timeout, cwd=REPO)
        if res.returncode == 0 or UNREACHABLE not in res.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    if check and res.returncode != 0:
        raise AssertionError(f"cumulus {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def local(*args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess:
    res = subprocess.run([python(), "-m", "cumulus", "local", *args], env=cli_env(), capture_output=True,
                         text=True, timeout=timeout, cwd=REPO)
    if check and res.returncode != 0:
        raise AssertionError(f"cumulus local {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def add_node() -> dict[str, Any]:
    return json.loads(local("add-node", "-o", "json").stdout)


def run_on(node: dict[str, Any], line: str, timeout: float = JOIN_TIMEOUT) -> subprocess.CompletedProcess:
    """The line run as root on the node, exactly as printed (the stand-in for typing it in `ssh root@host`)."""
    return local("exec", node["name"], "--", "bash", "-c", line, check=False, timeout=timeout)


MADE_TOKENS: list[str] = []  # ids of the join tokens the tests made: revoke_unused() revokes those left unused


def join_line(*flags: str) -> str:
    line = cumulus("worker", "join-command", *flags).stdout.strip()
    assert "\n" not in line and line.startswith("curl "), line
    MADE_TOKENS.append(token_in(line).split("_")[2])
    return line


def join_token(*flags: str) -> dict[str, Any]:
    """``join-command -o json``: the token's id, expiry, the line."""
    made = json.loads(cumulus("worker", "join-command", "-o", "json", *flags).stdout)
    MADE_TOKENS.append(made["id"])
    return made


def revoke_unused() -> None:
    """Revoke the tests' join tokens that are still pending or registered (the list keeps the rest for audit)."""
    listed = {t["id"]: t["state"] for t in json.loads(cumulus("worker", "join-tokens", "-o", "json").stdout)}
    for token_id in MADE_TOKENS:
        if listed.get(token_id) in ("pending", "registered"):
            cumulus("worker", "revoke-join-token", token_id)
    MADE_TOKENS.clear()


def token_in(line: str) -> str:
    return re.search(r"CUMULUS_JOIN_TOKEN='?([^' ]+)'?", line)[1]


def pin_in(line: str) -> str:
    return re.search(r"--pin '?([^' ]+)'?$", line)[1]


def with_script_pin(line: str, pin: str) -> str:
    """The line with join.sh's own --pin (its last argument) replaced; the download's pin is kept."""
    start = line.rindex("--pin ")
    return f"{line[:start]}--pin '{pin}'"


def refusal(res: subprocess.CompletedProcess) -> str:
    """The `join: ...` line of a refused run (asserting it was refused)."""
    assert res.returncode == 1, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    lines = [line for line in res.stderr.splitlines() if line.startswith("join: ")]
    assert lines, res.stderr
    return lines[-1]


def workers() -> dict[str, dict[str, Any]]:
    return {w["hostname"]: w for w in json.loads(cumulus("workers", "-o", "json").stdout)}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ Swarm
def _manager_nodes() -> list[dict[str, Any]]:
    from cumulus.local import daemons, state

    status, nodes = daemons.docker_api(state.Node(0).docker_socket, "/nodes", timeout=10)
    assert status == 200, nodes
    return nodes


IMAGE_LABEL = "cumulus.worker_image"


def swarm_snapshot() -> dict[str, tuple[str, str]]:
    """Every Swarm node: its hostname and its spec (labels, role, availability), as the manager lists them. Less
    the label ``cumulus.worker_image``, which the image gate of any supervisor on the cluster sets when it pulls its
    image to a node (other supervisors may be running tests meanwhile); a join never writes it."""
    def spec(node: dict[str, Any]) -> str:
        labels = {k: v for k, v in (node["Spec"].get("Labels") or {}).items() if k != IMAGE_LABEL}
        return json.dumps({**node["Spec"], "Labels": labels}, sort_keys=True)

    return {n["ID"]: (n["Description"]["Hostname"], spec(n)) for n in _manager_nodes()}


def labels_of(node_id: str) -> dict[str, str]:
    return next(n["Spec"].get("Labels") or {} for n in _manager_nodes() if n["ID"] == node_id)


def host_swarm_state(node: dict[str, Any]) -> str:
    """The node's own view: its dockerd's Swarm state (inactive: in no Swarm)."""
    from cumulus.local import daemons

    _, info = daemons.docker_api(Path(node["docker_socket"]), "/info", timeout=10)
    return info["Swarm"]["LocalNodeState"]


def host_key_of(node: dict[str, Any]) -> str:
    return " ".join(Path(node["host_key_file"]).read_text().split()[:2])


# ------------------------------------------------------------------------------------------------ cleanup
def forget(node: dict[str, Any]) -> list[str]:
    """Take the node out of Cumulus and the Swarm and delete it; returns what went wrong (best effort)."""
    problems = []
    try:
        revoke_unused()
        if node["name"] in workers():
            res = cumulus("worker", "remove", node["name"], "--timeout", "30", check=False, timeout=180)
            if res.returncode != 0:
                problems.append(f"cumulus worker remove: {res.stderr.strip()}")
    except (AssertionError, subprocess.SubprocessError, ValueError) as exc:
        problems.append(f"cumulus workers: {exc}")
    res = local("remove-node", node["name"], check=False)
    if res.returncode != 0:
        problems.append(f"cumulus local remove-node: {res.stderr.strip()}")
    return problems


# ------------------------------------------------------------------------------------------------ secrets
class TokenWatch:
    """Looks at every process's command line and environment while the join line runs: the token may only be in
    the shell that runs the line (the user's own shell) and in join.sh itself (``bash -s``; its forks share its
    environment block); any other process with it is a leak."""

    def __init__(self, token: str, line: str) -> None:
        self.token, self.line = token.encode(), line.encode()
        self.leaks: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> TokenWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    self._look(entry)

    def _look(self, pid: str) -> None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return
        if self.line in cmdline:
            return  # the shell the line was typed in
        shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
        if self.token in cmdline:
            self.leaks.add(f"command line of {pid}: {shown}")
        if self.token in environ and not cmdline.startswith(b"bash\0-s\0--\0--supervisor\0"):
            self.leaks.add(f"environment of {pid}: {shown}")


def files_with(secret: str, roots: list[Path], skip: tuple[str, ...] = (), depth: int = 8) -> list[str]:
    """Regular files under ``roots`` (at most ``depth`` levels down, not following links, up to 64 MiB) that
    contain ``secret``."""
    import stat

    needle = secret.encode()
    found = []
    for root in roots:
        if root.is_file():
            if needle in root.read_bytes():
                found.append(str(root))
            continue
        for directory, dirs, files in os.walk(root):
            level = len(Path(directory).relative_to(root).parts)
            dirs[:] = [d for d in dirs if str(Path(directory, d)) not in skip] if level < depth else []
            for name in files:
                path = Path(directory, name)
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode) or info.st_size > 64 << 20:
                        continue
                    if needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    return found
