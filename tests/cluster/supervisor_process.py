"""A REAL supervisor process for front-door tests: ``python -m cumulus supervisor --config <tmp>/sup.yaml``.

    from supervisor_process import remote_supervisor      # a module-scoped fixture: import it into the test module

    def test_something(remote_supervisor):
        sup = remote_supervisor                            # SupervisorProcess
        client = sup.client()                              # CumulusClient(sup.address, log_to_driver=False)
        res = sup.cli("jobs", "--json")                    # `cumulus jobs --json --address <sup.address>`
        assert not sup.leftovers([job_id], expect={job_id: "CANCELLED"})

The process has its own ``supervisor_id`` (``tf-<hex>``: its services, holders and job dirs are labelled with it,
so orphan reaping and the leak checks leave every other supervisor alone), a free loopback port, the local
cluster's description, non-GPU devices allowed, a 0.1 s poll interval, and a journal in a temporary directory. It
runs in a session of its own (a Ctrl-C of pytest does not reach it) with ``CUMULUS_*`` variables removed from its
environment, so only the config file decides. The fixture waits until ``cumulus health --address`` says SERVING
and every worker of the cluster is listed healthy, and at the end sends SIGTERM and asserts the process exits 0
within ``STOP_TIMEOUT`` seconds (a clean shutdown) and left no service labelled with its id.

:meth:`SupervisorProcess.leftovers` is :func:`helpers.find_leftovers` for a supervisor in another process: the
job's status over gRPC (finished, teardown without leaks, the expected state), the supervisor's share accounting
(``ListWorkers``: every device fully free, no running jobs), and the same external probes (Swarm services by
label, containers on each worker's dockerd, holder processes, Chronos lock files, job directories).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

import pytest

from tests.credentials import security_yaml
from helpers import (cluster_description, holder_processes, job_dirs, lingering_containers, stale_locks,
                     swarm_services, taken_warm_containers)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_JSON = "/var/lib/cumulus-local/cluster.json"
START_TIMEOUT = 60.0  # until SERVING and every worker healthy (SSH to each worker, orphan reaping)
STOP_TIMEOUT = 10.0  # SIGTERM -> exit 0 (jobs torn down, SSH closed, journal closed)
CLI_TIMEOUT = 120.0
TEARDOWN_TIMEOUT = 30.0  # a job that ended by itself: until its teardown is done
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This process's environment without CUMULUS_* (settings come from the config file and flags only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_") or k == "CUMULUS_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(path: Path, *, sid: str, listen: str, journal: Path, extra: str = "",
                 http_listen: str = "127.0.0.1:0") -> Path:
    path.write_text(
        f"supervisor_id: \"{sid}\"\n"
        f"grpc:\n  listen: \"{listen}\"\n"
        f"server:\n  http_listen: \"{http_listen}\"\n"
        f"cluster:\n  description: \"{CLUSTER_JSON}\"\n  allow_non_gpu_devices: true\n  poll_interval: 0.1\n"
        f"journal:\n  path: \"{journal}\"\n"
        f"logging:\n  level: \"INFO\"\n"
        + security_yaml()
        + extra
    )
    return path


@dataclass
class SupervisorProcess:
    sid: str
    address: str
    proc: subprocess.Popen
    config: Path
    journal: Path
    log_path: Path
    worker_hostnames: list[str] = field(default_factory=list)
    started_in: float = 0.0
    stopped_in: float | None = None

    # ---- talking to it -----------------------------------------------------------------------------------------
    def client(self, **kwargs: Any):
        from cumulus.client.client import CumulusClient

        kwargs.setdefault("log_to_driver", False)
        return CumulusClient(self.address, **kwargs)

    def cli(self, *argv: str, address: bool = True, timeout: float = CLI_TIMEOUT, check_rc: int | None = None
            ) -> subprocess.CompletedProcess:
        """``python -m cumulus ARGV [--address ADDRESS]`` in a subprocess (stdout/stderr captured as text)."""
        cmd = [python(), "-m", "cumulus", *argv] + (["--address", self.address] if address else [])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=REPO)
        if check_rc is not None:
            assert res.returncode == check_rc, (f"{' '.join(argv)}: exit {res.returncode}, expected {check_rc}\n"
                                                f"stdout: {res.stdout}\nstderr: {res.stderr}")
        return res

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    # ---- waiting ---------------------------------------------------------------------------------------------
    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"supervisor exited with {self.proc.returncode} while starting:\n"
                                     f"{self.log_tail()}")
            last = self.cli("health", "--timeout", "2", timeout=20)
            if last.returncode == 0 and last.stdout.startswith("SERVING"):
                return
            time.sleep(0.2)
        raise AssertionError(f"supervisor not SERVING after {timeout:g} s (last: {last and last.stdout!r} "
                             f"{last and last.stderr!r}):\n{self.log_tail()}")

    def wait_workers(self, hostnames: Iterable[str], *, healthy: bool = True, timeout: float = START_TIMEOUT
                     ) -> list[Any]:
        """Wait until every worker of ``hostnames`` is listed with ``healthy``; return the listing."""
        wanted = set(hostnames)
        deadline = time.monotonic() + timeout
        workers: list[Any] = []
        with self.client() as client:
            while True:
                workers = client.list_workers()
                seen = {w.hostname: w for w in workers}
                if wanted <= set(seen) and all(seen[h].healthy is healthy for h in wanted):
                    return workers
                if time.monotonic() >= deadline:
                    raise AssertionError(f"workers {sorted(wanted)} not healthy={healthy} after {timeout:g} s: "
                                         f"{[(w.hostname, w.state, w.healthy, w.reason) for w in workers]}")
                if not self.alive():
                    raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.log_tail()}")
                time.sleep(0.2)

    # ---- leak check --------------------------------------------------------------------------------------------
    def leftovers(self, job_ids: Iterable[str], *, expect: Mapping[str, str | Iterable[str]] | None = None,
                  teardown_timeout: float = TEARDOWN_TIMEOUT, settle: float = 0.0) -> list[str]:
        """Everything left of ``job_ids`` (see the module docstring), as readable lines; ``[]`` if nothing.

        Each job's event stream is read to its end first: it ends once the job is torn down (a job that ends by
        itself is COMPLETED before its teardown; give ``teardown_timeout`` ~0 after a cancel, which returns only
        once the job is torn down)."""
        job_ids = list(job_ids)
        expect = expect or {}
        desc = cluster_description()
        deadline = time.monotonic() + settle
        with self.client() as client:
            while True:
                problems, records = [], []
                for job_id in job_ids:
                    problems += torn_down_problems(client, job_id, teardown_timeout)
                    info = client.status(job_id)
                    records.append(SimpleNamespace(job_id=job_id, partition_id=info.partition_id,
                                                   submitted_at=info.submitted_at or time.time() - 600,
                                                   finished_at=info.finished_at))
                    if not info.finished:
                        problems.append(f"{job_id}: not finished (state {info.state})")
                    if info.leaked:
                        problems.append(f"{job_id}: teardown leaked {list(info.leaked)}")
                    if job_id in expect:
                        wanted = expect[job_id]
                        wanted = {wanted} if isinstance(wanted, str) else set(wanted)
                        if info.state not in wanted:
                            problems.append(f"{job_id}: state {info.state} ({info.reason!r}), expected "
                                            f"{sorted(wanted)}")
                for worker in client.list_workers():
                    for device in worker.devices:
                        if abs(device.used_share) > 1e-9 or abs(device.free_share - 1.0) > 1e-9:
                            problems.append(f"{worker.hostname} device {device.index}: used_share "
                                            f"{device.used_share}, free_share {device.free_share}")
                    if worker.running_jobs:
                        problems.append(f"{worker.hostname}: running_jobs {worker.running_jobs}")
                problems += [f"service left: {s}" for s in swarm_services(self.sid, desc, idle_warm=False)]
                problems += [f"container left: {c}" for c in lingering_containers(job_ids, desc)]
                problems += [f"warm container left: {c}" for c in taken_warm_containers(self.sid, desc)]
                problems += [f"holder process left: {p}" for p in holder_processes(job_ids)]
                problems += [f"chronos lock left: {lock}" for lock in stale_locks(records)]
                problems += [f"job dir left: {d}"
                             for d in job_dirs(job_ids, desc.get("jobs_dir", "/var/lib/cumulus/jobs"))]
                if not problems or time.monotonic() >= deadline:
                    return problems
                time.sleep(0.2)

    def assert_nothing_left(self, job_ids: Iterable[str], **kwargs: Any) -> None:
        problems = self.leftovers(job_ids, **kwargs)
        assert not problems, "left behind:\n  " + "\n  ".join(problems)

    # ---- stopping -----------------------------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM; wait up to ``timeout`` s. Returns the exit status, or None if it had to be SIGKILLed."""
        if not self.alive():
            return self.proc.returncode
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
            self.stopped_in = time.monotonic() - started
            return code
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


def torn_down_problems(client: Any, job_id: str, timeout: float) -> list[str]:
    """Read the job's WatchJob stream (no logs) to its end, which comes once the job is torn down; problems if it
    does not end within ``timeout`` s or does not hold exactly one terminal state event."""
    import grpc

    from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

    terminal = []
    try:
        for ev in client._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, include_logs=False),
                                        timeout=max(timeout, 0.5)):
            if ev.WhichOneof("kind") == "state" and pb.JobState.Name(ev.state) in TERMINAL_STATES:
                terminal.append(pb.JobState.Name(ev.state))
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return [f"{job_id}: not torn down within {timeout:g} s (its event stream did not end)"]
        return [f"{job_id}: WatchJob failed: {error.code().name}: {error.details()}"]
    if len(terminal) != 1:
        return [f"{job_id}: {len(terminal)} terminal state events {terminal}"]
    return []


def start_supervisor(directory: Path, worker_hostnames: list[str], *, sid: str | None = None, extra: str = "",
                     timeout: float = START_TIMEOUT, http_listen: str = "127.0.0.1:0") -> SupervisorProcess:
    """Start a supervisor process with its config, journal and log in ``directory``; return it once it serves and
    sees every worker of ``worker_hostnames`` healthy (it is stopped again if that does not happen)."""
    directory.mkdir(parents=True, exist_ok=True)
    sid = sid or f"tf-{secrets.token_hex(4)}"
    address = f"127.0.0.1:{free_port()}"
    journal = directory / "journal.sqlite3"
    config = write_config(directory / "sup.yaml", sid=sid, listen=address, journal=journal, extra=extra,
                          http_listen=http_listen)
    log_path = directory / "supervisor.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([python(), "-m", "cumulus", "supervisor", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=directory, env=clean_env())
    sup = SupervisorProcess(sid=sid, address=address, proc=proc, config=config, journal=journal,
                            log_path=log_path, worker_hostnames=list(worker_hostnames))
    ready = False
    try:
        sup.wait_serving(timeout)
        sup.wait_workers(worker_hostnames, timeout=max(1.0, timeout - (time.monotonic() - started)))
        ready = True
    finally:
        if not ready:  # failed or interrupted while starting: do not leave the process behind
            sup.stop()
    sup.started_in = time.monotonic() - started
    return sup


@pytest.fixture(scope="module")
def remote_supervisor(cluster, tmp_path_factory):
    """A real ``cumulus supervisor`` process on the local cluster for this module (see the module docstring)."""
    hostnames = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    sup = start_supervisor(tmp_path_factory.mktemp("supervisor"), hostnames)
    try:
        yield sup
    finally:
        was_alive = sup.alive()
        code = sup.stop()
        left = swarm_services(sup.sid)
        print(f"\nsupervisor {sup.sid} at {sup.address}: serving with all workers healthy after "
              f"{sup.started_in:.1f} s; SIGTERM -> exit {code} in "
              f"{'-' if sup.stopped_in is None else f'{sup.stopped_in:.2f}'} s")
    assert was_alive, f"the supervisor died during the tests (exit {sup.proc.returncode}):\n{sup.log_tail()}"
    assert code == 0, (f"SIGTERM: the supervisor did not exit 0 within {STOP_TIMEOUT:g} s (exit {code}):\n"
                       f"{sup.log_tail()}")
    assert "supervisor stopped" in sup.log(), sup.log_tail()
    assert not left, f"services of {sup.sid} left after the supervisor stopped: {left}"


__all__ = ["SupervisorProcess", "clean_env", "free_port", "python", "remote_supervisor", "start_supervisor"]
