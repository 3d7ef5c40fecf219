"""Tools for the chaos suite on the real local cluster (``test_chaos.py``): a supervisor run as a subprocess that
can be SIGKILLed and restarted on the same config and journal, fault counters, and the leak checks through the SDK.

    with SupervisorProcess(tmp_path, "chaos-a-1234") as sup:   # free loopback port, own journal
        client = sup.client()
        ...
        sup.kill()           # SIGKILL, like a crash
        sup.start()          # same config, same journal

    problems = leftovers(sup, job_ids, settle=30)   # [] once nothing of the jobs is left

What "nothing left" means is the same as :mod:`helpers` (``find_leftovers``), seen from outside the process: every
job terminal and torn down (not listed by ``list_jobs(include_finished=False)``) with a teardown report without
leaks; no service labelled with the supervisor id; no container, holder process, Chronos lock file, job dir or
lease dir of the jobs; every share of every worker back to zero and no running jobs in the supervisor's accounting.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable

from helpers import _external_problems, cluster_description, share_problems
from tests.credentials import security_yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_JSON = "/var/lib/cumulus-local/cluster.json"
LEASES_DIR = ".leases"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


# ------------------------------------------------------------------------------------------------- counting
@dataclass
class Counts:
    """Faults injected and leaks found in one scenario; ``line()`` is the summary the lead quotes."""

    scenario: str
    faults: int = 0
    leaks: int = 0
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)

    def fault(self, what: str) -> None:
        self.faults += 1
        self.note(f"fault {self.faults}: {what}")

    def note(self, text: str) -> None:
        line = f"[{self.scenario} +{time.monotonic() - self.started:6.1f}s] {text}"
        self.notes.append(line)
        print(line, flush=True)

    def line(self) -> str:
        return (f"chaos: {self.faults} faults, {self.leaks} leaks "
                f"({self.scenario}, {time.monotonic() - self.started:.1f} s)")


# ------------------------------------------------------------------------------------------------ supervisor
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SupervisorProcess:
    """``python -m cumulus supervisor --config <dir>/sup.yaml`` with its own id, loopback port and journal."""

    def __init__(self, directory: Path, supervisor_id: str, *, ttl: float = 6, renew_interval: float = 1,
                 extra: str = "") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.supervisor_id = supervisor_id
        self.address = f"127.0.0.1:{free_port()}"
        self.config = self.dir / "sup.yaml"
        self.journal = self.dir / "journal.sqlite3"
        self.log = self.dir / "supervisor.log"
        self.config.write_text(
            f"supervisor_id: {supervisor_id}\n"
            f"grpc:\n  listen: \"{self.address}\"\n"
            f"server:\n  http_listen: \"127.0.0.1:0\"\n"  # a free port: the default may be the local cluster's
            f"cluster:\n  description: \"{CLUSTER_JSON}\"\n  allow_non_gpu_devices: true\n  poll_interval: 0.1\n"
            f"lease:\n  renew_interval: {renew_interval}\n  ttl: {ttl}\n"
            f"journal:\n  path: \"{self.journal}\"\n" + security_yaml() + extra
        )
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._clients: list = []

    # -- process
    def start(self, timeout: float = 60) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "ab") as log:
            log.write(f"\n===== start {self.starts + 1} at {time.time():.3f} =====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cumulus", "supervisor", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                start_new_session=True)
        self.starts += 1
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 60) -> None:
        from cumulus.client.health import check_health

        deadline = time.monotonic() + timeout
        reason = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.log_tail()}")
            ok, reason = check_health(self.address, timeout=1.0)
            if ok:
                return
            time.sleep(0.1)
        raise AssertionError(f"supervisor not serving after {timeout} s ({reason}):\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is torn down)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (clean shutdown); SIGKILL if it does not stop in time. Returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def client(self):
        """A NEW SDK client (closed with this object)."""
        from cumulus.client import CumulusClient

        client = CumulusClient(self.address, log_to_driver=False)
        self._clients.append(client)
        return client

    def wait_workers(self, count: int, timeout: float = 40) -> list:
        client = self.client()
        deadline = time.monotonic() + timeout
        workers: list = []
        while time.monotonic() < deadline:
            try:
                workers = client.list_workers()
            except Exception:  # still starting
                workers = []
            if len(workers) >= count and all(w.healthy for w in workers):
                return workers
            time.sleep(0.1)
        raise AssertionError(f"{count} healthy workers not seen in {timeout} s: {workers}")

    def __enter__(self) -> SupervisorProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        if self.stop(timeout=20) is None and self.proc is not None:
            print(f"supervisor {self.supervisor_id} needed SIGKILL to stop", flush=True)


def retry(fn: Callable, *, timeout: float = 30, what: str = "", on_error: Callable | None = None):
    """Call ``fn()`` until it does not raise (the supervisor restarting answers UNAVAILABLE meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - SupervisorUnavailable, RemoteError, grpc errors
            if on_error is not None:
                on_error(error)
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what or fn} kept failing for {timeout} s: {error!r}") from error
            time.sleep(0.2)


# --------------------------------------------------------------------------------------------------- waiting
def wait_terminal(client, job_ids: Iterable[str], timeout: float) -> dict:
    """Poll ``status`` until every job is terminal; returns ``{job_id: JobInfo}``."""
    job_ids = list(job_ids)
    infos: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id in infos and infos[job_id].state in TERMINAL:
                continue
            try:
                infos[job_id] = client.status(job_id)
            except Exception:  # noqa: BLE001 - restarting: ask again
                pass
        if all(j in infos and infos[j].state in TERMINAL for j in job_ids):
            return infos
        time.sleep(0.25)
    pending = {j: (infos[j].state, infos[j].reason) if j in infos else "?" for j in job_ids
               if j not in infos or infos[j].state not in TERMINAL}
    raise AssertionError(f"{len(pending)} jobs not terminal after {timeout} s: {pending}")


def wait_moved_off(client, job_ids: Iterable[str], worker: str, timeout: float) -> dict:
    """Poll ``status`` until no job of ``job_ids`` is still on ``worker`` (a dead node): each is terminal, or a
    later attempt was placed on another worker. Returns ``{job_id: JobInfo}``."""
    job_ids = list(job_ids)
    infos: dict = {}
    deadline = time.monotonic() + timeout

    def moved(info) -> bool:
        return info.state in TERMINAL or (info.attempt > 1 and info.worker and info.worker != worker)

    while time.monotonic() < deadline:
        for job_id in job_ids:
            try:
                infos[job_id] = client.status(job_id)
            except Exception:  # noqa: BLE001 - ask again
                pass
        if all(j in infos and moved(infos[j]) for j in job_ids):
            return infos
        time.sleep(0.25)
    pending = {j: (infos[j].state, infos[j].worker, infos[j].attempt) if j in infos else "?" for j in job_ids
               if j not in infos or not moved(infos[j])}
    raise AssertionError(f"{len(pending)} jobs still on {worker} after {timeout} s: {pending}")


def terminal_events(client, job_id: str) -> list[str]:
    """The terminal states among the job's replayed event history (the stream ends for a torn-down job)."""
    return [u.state for u in client.watch(job_id, include_logs=False, idle_timeout=5)
            if u.kind == "state" and u.state in TERMINAL]


# ---------------------------------------------------------------------------------------------------- leaks
def _connection_lost(leak: str) -> bool:
    return any(sign in leak for sign in ("SSH connection closed", "ChannelOpenError", "connection lost",
                                         "Connection lost", "ConnectionLost", "not connected"))


def _record_problems(client, job_ids: list[str]) -> tuple[list[str], list]:
    problems, records = [], []
    live = {j.job_id for j in client.list_jobs(include_finished=False)}
    for job_id in job_ids:
        info = client.status(job_id)
        records.append(SimpleNamespace(job_id=job_id, partition_id=info.partition_id,
                                       submitted_at=info.submitted_at or 0.0, finished_at=info.finished_at))
        if info.state not in TERMINAL:
            problems.append(f"{job_id}: not terminal ({info.state} {info.reason!r})")
        elif job_id in live:
            problems.append(f"{job_id}: {info.state} but not torn down")
        # A release through a node that had died cannot succeed, and the report says so. It is accepted only
        # when every such entry is about the lost connection: what that node still holds is then checked
        # physically below (holders, locks, dirs, lease dirs, containers), after the node returned and its
        # orphans were reaped.
        unreachable = [leak for leak in info.leaked if _connection_lost(leak)]
        if len(unreachable) != len(info.leaked):
            problems.append(f"{job_id}: teardown leaked {list(info.leaked)}")
    return problems, records


def lease_dirs(job_ids: Iterable[str], jobs_dir: str) -> list[str]:
    base = Path(jobs_dir) / LEASES_DIR
    return [str(base / j) for j in job_ids if (base / j).exists()]


def leftovers(sup: SupervisorProcess, job_ids: Iterable[str], *, settle: float = 0.0) -> list[str]:
    """Everything left of ``job_ids`` (module docstring), retried for up to ``settle`` seconds; ``[]`` if none."""
    job_ids = list(job_ids)
    desc = cluster_description()
    client = sup.client()
    deadline = time.monotonic() + settle
    while True:
        try:
            problems, records = _record_problems(client, job_ids)
            problems += share_problems(client.list_workers())
            problems += _external_problems(sup.supervisor_id, job_ids, records, desc)
            problems += [f"lease dir left: {d}" for d in lease_dirs(job_ids, desc.get("jobs_dir",
                                                                                       "/var/lib/cumulus/jobs"))]
        except Exception as error:  # noqa: BLE001 - a check that cannot run is a problem too (and retried)
            problems = [f"check failed: {error!r}"]
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.5)


def container_starts(supervisor_id: str, since: float, desc: dict | None = None) -> dict[str, int]:
    """How many containers of each job of ``supervisor_id`` started since ``since`` (Unix time), counted from
    every live worker dockerd's event log: a job that ran twice started two containers."""
    import docker

    desc = desc or cluster_description()
    counts: dict[str, int] = {}
    for node in desc["nodes"]:
        if node["role"] != "worker":
            continue
        client = docker.DockerClient(base_url=f"unix://{node['docker_socket']}", version="auto", timeout=30)
        try:
            events = client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True, filters={
                "type": "container", "event": "start", "label": f"cumulus.supervisor_id={supervisor_id}"})
            for event in events:
                job = ((event.get("Actor") or {}).get("Attributes") or {}).get("cumulus.job_id")
                if job:
                    counts[job] = counts.get(job, 0) + 1
        finally:
            client.close()
    return counts


# ------------------------------------------------------------------------------------------- local cluster
def local(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``cumulus local ARGS`` (kill-node, revive-node, status), checked."""
    return subprocess.run([sys.executable, "-m", "cumulus", "local", *args], capture_output=True, text=True,
                          check=True, timeout=timeout)


def node_ready(index: int) -> bool:
    import json

    res = subprocess.run([sys.executable, "-m", "cumulus", "local", "status", "--json"], capture_output=True,
                         text=True, timeout=60)
    try:
        desc = json.loads(res.stdout)
    except ValueError:
        return False
    for node in desc.get("nodes", []):
        if node.get("index") == index:
            return str(node.get("state", "")).lower() == "ready" and node.get("sshd") in ("running", True)
    return False


def link(name: str, up: bool) -> None:
    subprocess.run(["ip", "link", "set", name, "up" if up else "down"], check=True, timeout=10)


def link_is_up(name: str) -> bool:
    res = subprocess.run(["ip", "-o", "link", "show", name], capture_output=True, text=True, timeout=10)
    return "state UP" in res.stdout or ",UP" in res.stdout.split(">")[0]
