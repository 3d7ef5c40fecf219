"""Leak checks for tests that run jobs on the real local cluster through ``open_supervisor``.

    problems = await find_leftovers(sup, sid, job_ids)      # [] when nothing is left
    await assert_nothing_left(sup, sid, job_ids, expect={job_id: JobState.CANCELLED})

What "nothing left" means once every job of ``job_ids`` has been torn down:

* the job record: torn down, teardown report without leaks, exactly one terminal state event (the terminal state is
  written once), and the expected final state if one is given;
* Swarm: no service labelled ``cumulus.supervisor_id=<sid>`` on the manager, no container labelled with one of the
  job ids on any worker's own dockerd (an *exited* one is given ``EXITED_CONTAINER_GRACE`` s: Swarm drops a
  removed service's task once its container stopped, and the worker deletes the container a moment later);
* worker hosts (the local cluster's namespaces share this machine's process table and filesystem): no process
  whose command line names ``cumulus-partition-holder`` and the job id (the holder or its SSH wrapper), no Chronos
  lock file ``/tmp/chronos_locks/<partition id>.lock`` of the job, nor a lock file created during the job's life
  by a process that is gone (a partition created and never released, e.g. by a holder stopped mid-creation), no
  job directory ``<jobs_dir>/<job id>``;
* the supervisor's accounting: every device of every worker at ``used_share == 0`` and no running jobs.

Everything blocking runs in a thread so that the supervisor (same Trio loop) keeps running while we look.
``settle`` retries the external checks for that many seconds (for chaos tests whose cleanup is asynchronous by
design, e.g. orphan reaping); the default 0 asserts the promise as it stands: when ``cancel``/``torn_down``
returned, nothing of the job is left.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import trio

from cumulus.jobs import JobRecord, JobState

CHRONOS_LOCKS = Path("/tmp/chronos_locks")
HOLDER_NAME = "cumulus-partition-holder"
EXITED_CONTAINER_GRACE = 10.0
_LOCK_RE = re.compile(r"^partition_(\d+)_(\d+)_\d+\.lock$")


def cluster_description() -> dict:
    from cumulus.local.state import load_cluster

    return load_cluster()


def _docker(socket_path: str):
    import docker

    return docker.DockerClient(base_url=f"unix://{socket_path}", version="auto", timeout=30)


# ------------------------------------------------------------------------------------------ blocking probes
def swarm_services(sid: str, desc: dict | None = None, *, idle_warm: bool = True) -> list[str]:
    """Names of the manager's services labelled with supervisor id ``sid``. ``idle_warm=False`` leaves out the warm
    services of a running supervisor's pools that no job took (their warm directory is still there: a job renames
    it); a stopped supervisor must have left none at all."""
    desc = desc or cluster_description()
    jobs_dir = desc.get("jobs_dir", "/var/lib/cumulus/jobs")
    client = _docker(desc["manager_socket"])
    try:
        services = client.api.services(filters={"label": f"cumulus.supervisor_id={sid}"})
    finally:
        client.close()

    def idle(spec: dict) -> bool:
        labels = spec.get("Labels") or {}
        return labels.get("cumulus.warm") == "1" and os.path.isdir(os.path.join(jobs_dir, labels.get(
            "cumulus.job_id", "-")))

    return [s["Spec"]["Name"] for s in services if idle_warm or not idle(s["Spec"])]


def worker_containers(job_ids: Iterable[str], desc: dict | None = None) -> list[str]:
    """``"<node>: <container name> (<state>)"`` for every container of one of ``job_ids`` on any worker's dockerd
    (running or not)."""
    desc = desc or cluster_description()
    wanted = set(job_ids)
    found = []
    for node in desc["nodes"]:
        if node["role"] != "worker":
            continue
        client = _docker(node["docker_socket"])
        try:
            # The summary listing, not containers.list(): that inspects each container after listing them, and a
            # container removed in between (as a job's teardown does) raises NotFound.
            for c in client.api.containers(all=True, filters={"label": "cumulus.job_id"}):
                if (c.get("Labels") or {}).get("cumulus.job_id") in wanted:
                    name = (c.get("Names") or ["?"])[0].lstrip("/")
                    found.append(f"{node['name']}: {name} ({c.get('State')})")
        finally:
            client.close()
    return found


def taken_warm_containers(sid: str, desc: dict | None = None) -> list[str]:
    """Containers of warm services of ``sid`` that a job took (their warm directory was renamed to the job's) and
    that are still there after ``EXITED_CONTAINER_GRACE``: their task keeps the warm id as its job label, so
    :func:`worker_containers` of the job ids cannot see them."""
    desc = desc or cluster_description()
    jobs_dir = desc.get("jobs_dir", "/var/lib/cumulus/jobs")

    def taken() -> list[str]:
        found = []
        for node in desc["nodes"]:
            if node["role"] != "worker":
                continue
            client = _docker(node["docker_socket"])
            try:
                for c in client.api.containers(all=True, filters={"label": ["cumulus.warm=1",
                                                                            f"cumulus.supervisor_id={sid}"]}):
                    warm_id = (c.get("Labels") or {}).get("cumulus.job_id", "-")
                    if not os.path.isdir(os.path.join(jobs_dir, warm_id)):
                        found.append(f"{node['name']}: {(c.get('Names') or ['?'])[0].lstrip('/')} ({c.get('State')})")
            finally:
                client.close()
        return found

    deadline = time.monotonic() + EXITED_CONTAINER_GRACE
    containers = taken()
    while containers and time.monotonic() < deadline:
        time.sleep(0.1)
        containers = taken()
    return containers


def lingering_containers(job_ids: Iterable[str], desc: dict | None = None) -> list[str]:
    """:func:`worker_containers` of ``job_ids`` that are still there once stopped ones had
    ``EXITED_CONTAINER_GRACE`` seconds to go.

    Swarm forgets a removed service's task once its container has stopped; the worker removes the exited container
    a moment later, on its own. Stopped-but-not-yet-removed is not a leak unless it stays.
    """
    job_ids = list(job_ids)
    containers = worker_containers(job_ids, desc)
    deadline = time.monotonic() + EXITED_CONTAINER_GRACE
    while containers and all(c.endswith(("(exited)", "(removing)")) for c in containers) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        containers = worker_containers(job_ids, desc)
    return containers


def holder_processes(job_ids: Iterable[str]) -> list[str]:
    """``pgrep -af cumulus-partition-holder`` lines that name one of ``job_ids`` (the holder or its wrapper)."""
    res = subprocess.run(["pgrep", "-af", HOLDER_NAME], capture_output=True, text=True, check=False)
    lines = [line for line in res.stdout.splitlines() if "pgrep" not in line]
    return [line for line in lines for job in job_ids if re.search(rf"--job-id[ =]'?{re.escape(job)}\b", line)]


def lock_files() -> list[str]:
    try:
        return sorted(os.listdir(CHRONOS_LOCKS))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stale_locks(records: Iterable[JobRecord]) -> list[str]:
    """Lock files of the jobs' partitions, and lock files created (by the ms timestamp in their name) during one
    of the jobs' lives whose creating process is gone."""
    records = list(records)
    names = lock_files()
    out = []
    own = {f"{r.partition_id}.lock": r.job_id for r in records if r.partition_id}
    for name in names:
        if name in own:
            out.append(f"{name} (partition of {own[name]})")
            continue
        m = _LOCK_RE.match(name)
        if not m:
            continue
        pid, created_ms = int(m.group(1)), int(m.group(2))
        for r in records:
            end = (r.finished_at or time.time()) + 60  # teardown follows the terminal state
            if r.submitted_at * 1000 - 1000 <= created_ms <= end * 1000 and not _pid_alive(pid):
                out.append(f"{name} (created during {r.job_id}'s life by pid {pid}, which is gone)")
                break
    return out


def job_dirs(job_ids: Iterable[str], jobs_dir: str) -> list[str]:
    return [str(Path(jobs_dir) / j) for j in job_ids if (Path(jobs_dir) / j).exists()]


# --------------------------------------------------------------------------------------------------- checks
async def terminal_state_events(record: JobRecord) -> list[JobState]:
    """The terminal states among the record's state events (its replayed history; the stream ends at once for a
    job that is torn down)."""
    states = []
    with trio.fail_after(5):
        async for event in record.events(replay_logs=False):
            if event.state is not None and event.state.terminal:
                states.append(event.state)
    return states


async def _record_problems(sup: Any, job_ids: list[str],
                           expect: Mapping[str, JobState | Iterable[JobState]]) -> tuple[list[str], list[JobRecord]]:
    problems, records = [], []
    for job_id in job_ids:
        record = await sup.get(job_id)
        records.append(record)
        if not record.torn_down.is_set():
            problems.append(f"{job_id}: not torn down (state {record.state.value})")
            continue
        if record.teardown is None or record.teardown.leaked:
            problems.append(f"{job_id}: teardown leaked {record.teardown and record.teardown.leaked}")
        terminals = await terminal_state_events(record)
        if len(terminals) != 1:
            problems.append(f"{job_id}: {len(terminals)} terminal state events {[s.value for s in terminals]}")
        if job_id in expect:
            wanted = expect[job_id]
            wanted = {wanted} if isinstance(wanted, JobState) else set(wanted)
            if record.state not in wanted:
                problems.append(f"{job_id}: state {record.state.value} ({record.reason!r}), expected "
                                f"{sorted(s.value for s in wanted)}")
            if terminals and terminals[-1] is not record.state:
                problems.append(f"{job_id}: terminal event {terminals[-1].value} != state {record.state.value}")
    return problems, records


def share_problems(workers: Iterable[Any]) -> list[str]:
    """Workers (WorkerInfo, from the API or the SDK) whose share accounting is not back to zero."""
    problems = []
    for worker in workers:
        for device in worker.devices:
            if abs(device.used_share) > 1e-9:
                problems.append(f"{worker.hostname} device {device.index}: used_share {device.used_share}")
        if worker.running_jobs:
            problems.append(f"{worker.hostname}: running_jobs {worker.running_jobs}")
    return problems


async def _accounting_problems(sup: Any) -> list[str]:
    return share_problems(await sup.list_workers())


def _external_problems(sid: str, job_ids: list[str], records: list[JobRecord], desc: dict) -> list[str]:
    problems = [f"service left: {s}" for s in swarm_services(sid, desc, idle_warm=False)]
    problems += [f"container left: {c}" for c in lingering_containers(job_ids, desc)]
    problems += [f"warm container left: {c}" for c in taken_warm_containers(sid, desc)]
    problems += [f"holder process left: {p}" for p in holder_processes(job_ids)]
    problems += [f"chronos lock left: {lock}" for lock in stale_locks(records)]
    problems += [f"job dir left: {d}" for d in job_dirs(job_ids, desc.get("jobs_dir", "/var/lib/cumulus/jobs"))]
    return problems


async def find_leftovers(
    sup: Any,
    sid: str,
    job_ids: Iterable[str],
    *,
    expect: Mapping[str, JobState | Iterable[JobState]] | None = None,
    settle: float = 0.0,
) -> list[str]:
    """Everything left of ``job_ids`` (see the module docstring), as readable lines; ``[]`` if nothing."""
    job_ids = list(job_ids)
    desc = await trio.to_thread.run_sync(cluster_description)
    deadline = trio.current_time() + settle
    while True:
        problems, records = await _record_problems(sup, job_ids, expect or {})
        problems += await _accounting_problems(sup)
        problems += await trio.to_thread.run_sync(_external_problems, sid, job_ids, records, desc)
        if not problems or trio.current_time() >= deadline:
            return problems
        await trio.sleep(0.2)


async def assert_nothing_left(
    sup: Any,
    sid: str,
    job_ids: Iterable[str],
    *,
    expect: Mapping[str, JobState | Iterable[JobState]] | None = None,
    settle: float = 0.0,
) -> None:
    """Assert :func:`find_leftovers` finds nothing."""
    problems = await find_leftovers(sup, sid, job_ids, expect=expect, settle=settle)
    assert not problems, "left behind:\n  " + "\n  ".join(problems)


async def wait_workers_healthy(sup: Any, count: int, timeout: float = 30.0) -> list[Any]:
    """Wait until the supervisor sees ``count`` workers, all healthy; return them."""
    with trio.fail_after(timeout):
        while True:
            workers = await sup.list_workers()
            if len(workers) >= count and all(w.healthy for w in workers):
                return workers
            await trio.sleep(0.05)


__all__ = ["assert_nothing_left", "find_leftovers", "holder_processes", "lingering_containers", "lock_files",
           "share_problems", "stale_locks", "swarm_services", "taken_warm_containers", "terminal_state_events", "wait_workers_healthy",
           "worker_containers"]
