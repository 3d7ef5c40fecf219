"""The self-expiring partition lease (dead-man switch) against the real local cluster: the detached
``cumulus-partition-holder``, the runner's lease watchdog, and the resource API around them
(open_detached_partition_lease, adopt_partition_lease, renew_leases, open_job_files' lease dir, adopt_job_files,
ServiceRequest.lease_dir, adopt_service).

The local cluster's worker namespaces share this machine's process table and filesystem, so pids, lease files and
Chronos lock files are checked locally too. Each test uses unique job ids and removes what it made.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import docker
import pytest
import trio

from cumulus.asyncio_bridge import open_asyncio_bridge
from cumulus.client.packaging import build_package
from cumulus.resources.files import adopt_job_files, open_job_files
from cumulus.resources.partition import (
    PartitionError, adopt_partition_lease, find_holders, kill_holder, open_detached_partition_lease, renew_leases,
)
from cumulus.resources.ssh import RemotePathNotFound, open_ssh_connection
from cumulus.resources.swarm import (
    LABEL_JOB, ServiceRequest, SwarmClient, SwarmError, adopt_service, build_service_spec, open_service,
)
from test_resources import worker_user

LOCKS = Path("/tmp/chronos_locks")
TTL = 3.0


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not a holder any more
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@asynccontextmanager
async def connect(cluster: dict, node: dict):
    host, port = node["ssh"].rsplit(":", 1)
    async with open_ssh_connection(host, int(port), user=cluster["ssh_user"], key_path=cluster["ssh_key"],
                                   known_hosts_path=cluster["known_hosts"]) as conn:
        yield conn


def holder_cmd(cluster: dict, job: str, lease_dir: str, ttl: float = TTL, fraction: float = 0.05) -> str:
    return (f"{cluster['holder']} --device 0 --fraction {fraction} --duration 120 --job-id {job}"
            f" --lease-dir {lease_dir} --lease-ttl {ttl} --detach")


async def wait_for(pred, timeout: float, poll: float = 0.05) -> float:
    """Seconds until ``pred()`` (sync) is true; fails after ``timeout``."""
    t0 = time.monotonic()
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(poll)
    return time.monotonic() - t0


# ----------------------------------------------------------------------------------------------------- holder
async def test_detached_holder_survives_session_renews_and_expires(cluster, workers):
    job = uid("dlease")
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn:
            async with open_job_files(conn, jobs_dir=cluster["jobs_dir"], job_id=job, package=b"x") as files:
                lease_dir = files.lease_dir
                assert lease_dir == f"{files.job_dir}/lease"
                st = (await conn.run(f"stat -c '%U %a' {lease_dir}")).stdout.split()
                assert st == [cluster["ssh_user"], "755"]

                # Started in a connection that is closed right after: the daemon must outlive it.
                async with connect(cluster, workers[0]) as starter:
                    t0 = time.monotonic()
                    res = await starter.run(holder_cmd(cluster, job, lease_dir))
                    t_start = time.monotonic() - t0
                msg = json.loads(res.stdout.strip().splitlines()[-1])
                pid, part = msg["pid"], msg["partition_id"]
                assert msg["job_id"] == job and msg["lease_ttl"] == TTL and part.startswith(f"partition_{pid}_")
                await trio.sleep(0.3)
                assert alive(pid) and (LOCKS / f"{part}.lock").exists()
                assert (await conn.run(f"kill -0 {pid}", check=False)).exit_status == 0  # seen from a new session
                holders = {h.pid: h for h in await find_holders(conn)}
                assert holders[pid].job_id == job and holders[pid].lease_dir == lease_dir
                assert holders[pid].partition_id == part and holders[pid].fraction == 0.05
                # its own session (setsid in the first child), of which it is not the leader (second fork)
                state, _ppid, pgrp, sid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:4]
                assert int(sid) == int(pgrp) != pid
                assert Path(f"{lease_dir}/renew").exists() and not Path(f"{lease_dir}/expired").exists()

                async with adopt_partition_lease(conn, job_id=job, pid=pid, partition_id=part, device=0,
                                                 fraction=0.05) as lease:
                    # Renewed every second for 5 s (> TTL): still alive.
                    renew_times = []
                    for _ in range(5):
                        t0 = time.monotonic()
                        assert await renew_leases(conn, {job: (lease_dir, pid)}) == set()
                        t_last = time.monotonic()
                        renew_times.append(t_last - t0)
                        await trio.sleep(1.0)
                    assert alive(pid) and (LOCKS / f"{part}.lock").exists()
                    # Renewals stop: within TTL + 2 s the holder has written `expired`, released and exited.
                    await wait_for(lambda: not alive(pid), TTL + 2 - (time.monotonic() - t_last))
                    t_gone = time.monotonic() - t_last
                    expired = Path(f"{lease_dir}/expired").read_text()
                    assert expired.startswith("lease: not renewed"), expired
                    assert not (LOCKS / f"{part}.lock").exists()
                    assert await renew_leases(conn, {job: (lease_dir, pid)}) == {job}
                    assert "released" in Path(f"{lease_dir}/holder.log").read_text()
                assert lease.released  # already gone = released (the guard does not touch a reused pid)
    print(f"\ndetached start {t_start * 1000:.0f} ms; renew (1 lease) "
          f"{min(renew_times) * 1000:.1f}-{max(renew_times) * 1000:.1f} ms; last renewal -> holder gone "
          f"{t_gone:.2f} s (ttl {TTL:g})")


async def test_open_detached_lease_release_errors_and_bulk_renew(cluster, workers):
    job = uid("dlease")
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn:
            async with open_job_files(conn, jobs_dir=cluster["jobs_dir"], job_id=job, package=b"x") as files:
                t0 = time.monotonic()
                async with open_detached_partition_lease(conn, device=0, fraction=0.1, duration=60, job_id=job,
                                                         lease_dir=files.lease_dir, ttl=30,
                                                         holder=cluster["holder"]) as lease:
                    t_start = time.monotonic() - t0
                    assert lease.partition_id.startswith(f"partition_{lease.holder_pid}_") and lease.device == 0
                    assert alive(lease.holder_pid) and (LOCKS / f"{lease.partition_id}.lock").exists()
                    assert not lease.lost.is_set()
                    assert await renew_leases(conn, {job: (files.lease_dir, lease.holder_pid)}) == set()
                    # a pid that is not this lease's holder (its cwd is not the lease dir)
                    assert await renew_leases(conn, {job: (files.lease_dir, 1)}) == {job}
                assert lease.released and not alive(lease.holder_pid)
                assert not (LOCKS / f"{lease.partition_id}.lock").exists()
                assert not Path(f"{files.lease_dir}/expired").exists()  # SIGTERM: released, no marker

                # cancellation releases too
                with trio.move_on_after(0.5):
                    async with open_detached_partition_lease(conn, device=0, fraction=0.1, duration=60, job_id=job,
                                                             lease_dir=files.lease_dir, ttl=30) as lease2:
                        await trio.sleep_forever()
                assert lease2.released and not alive(lease2.holder_pid)
                assert not (LOCKS / f"{lease2.partition_id}.lock").exists()

                for kw, match in (({"device": 7}, "Invalid device index: 7"),
                                  ({"fraction": 1.5}, "between 0 and 1"),
                                  ({"lease_dir": files.lease_dir + "/nope"}, "does not exist")):
                    args = dict(device=0, fraction=0.1, duration=60, job_id=job, lease_dir=files.lease_dir, ttl=30)
                    args.update(kw)
                    with pytest.raises(PartitionError, match=match):
                        async with open_detached_partition_lease(conn, **args):
                            pass
                assert job not in {h.job_id for h in await find_holders(conn)}

                # A start cancelled before its reply: holders of the job are stopped, and one that appears after
                # that is never renewed, so it ends by itself within its TTL.
                for delay in (0.01, 0.08):
                    with trio.move_on_after(delay):
                        async with open_detached_partition_lease(conn, device=0, fraction=0.1, duration=60,
                                                                 job_id=job, lease_dir=files.lease_dir, ttl=1):
                            await trio.sleep_forever()  # (if the reply was faster: released on exit)
                with trio.fail_after(4):
                    while job in {h.job_id for h in await find_holders(conn)}:
                        await trio.sleep(0.1)

                # ten leases renewed in one command
                dirs = [f"{files.job_dir}/l{i}" for i in range(10)]
                await conn.run("mkdir " + " ".join(dirs))
                async with AsyncExitStack() as stack:
                    leases = {}
                    for i, d in enumerate(dirs):
                        lz = await stack.enter_async_context(open_detached_partition_lease(
                            conn, device=0, fraction=0.01, duration=60, job_id=f"{job}-{i}", lease_dir=d, ttl=30))
                        leases[lz.job_id] = (d, lz.holder_pid)
                    times = []
                    for _ in range(5):
                        t0 = time.monotonic()
                        assert await renew_leases(conn, leases) == set()
                        times.append(time.monotonic() - t0)
                    dead = f"{job}-3"
                    assert await kill_holder(conn, leases[dead][1], job_id=dead)
                    assert await renew_leases(conn, leases) == {dead}
                    Path(f"{dirs[5]}/expired").write_text("test\n")
                    assert await renew_leases(conn, leases) == {dead, f"{job}-5"}
                    # the holder of 5 does not look at `expired` (only the runner does): stopped on exit below
                assert not [h for h in await find_holders(conn) if h.job_id and h.job_id.startswith(job)]
    print(f"\nopen_detached_partition_lease start {t_start * 1000:.0f} ms; renew (10 leases) "
          f"{min(times) * 1000:.1f}-{max(times) * 1000:.1f} ms")


async def test_adopt_job_files_and_bad_adoptions(cluster, workers):
    job = uid("dlease")
    jobs_dir = cluster["jobs_dir"]
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn:
            with pytest.raises(RemotePathNotFound):
                async with adopt_job_files(conn, jobs_dir=jobs_dir, job_id=job):
                    pass
            with pytest.raises(PartitionError, match="no holder"):
                async with adopt_partition_lease(conn, job_id=job, pid=os.getpid(), partition_id="p", device=0,
                                                 fraction=0.1):
                    pass
            assert alive(os.getpid())
            await conn.run(f"mkdir -p {jobs_dir}/{job}/lease")
            async with adopt_job_files(conn, jobs_dir=jobs_dir, job_id=job) as files:
                assert files.lease_dir == f"{jobs_dir}/{job}/lease"
            assert not Path(files.job_dir).exists()
    swarm = SwarmClient(f"unix://{cluster['manager_socket']}")
    with pytest.raises(SwarmError, match="no such service"):
        async with adopt_service(swarm, f"cumulus-{job}", job):
            pass
    await swarm.aclose()


def test_lease_mount_in_spec():
    base = dict(job_id="job-1", supervisor_id="s", node_id="abcdefghij0123456789abcde",
                image="sha256:" + "0" * 64, device_index=0, partition_id="p", code_dir="/j/job-1/code",
                output_dir="/j/job-1/output", user="1001:1001")
    mounts = {m["Target"]: m for m in
              build_service_spec(ServiceRequest(**base))["task_template"]["ContainerSpec"]["Mounts"]}
    assert "/cumulus/lease" not in mounts
    mounts = {m["Target"]: m for m in build_service_spec(ServiceRequest(**base, lease_dir="/j/job-1/lease"))
              ["task_template"]["ContainerSpec"]["Mounts"]}
    assert mounts["/cumulus/lease"]["Source"] == "/j/job-1/lease" and mounts["/cumulus/lease"]["ReadOnly"] is True
    from cumulus.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        build_service_spec(ServiceRequest(**base, lease_dir="/j/../etc"))


# ------------------------------------------------------------------------------------------ job container
def sleeper(seconds: float) -> str:
    import subprocess
    import time as _time

    subprocess.Popen(["sleep", str(int(seconds) + 1)])  # a child of the job: must die with it
    print("sleeping", flush=True)
    _time.sleep(seconds)
    return "woke up"


async def test_job_container_stops_when_lease_expires(cluster, workers):
    job = uid("dlease")
    node = workers[-1]
    swarm = SwarmClient(f"unix://{cluster['manager_socket']}")
    worker_docker = docker.APIClient(base_url=f"unix://{node['docker_socket']}", version="auto")
    package = build_package(sleeper, (60,))
    timings = {}
    async with open_asyncio_bridge():
        async with connect(cluster, node) as conn:
            async with open_job_files(conn, jobs_dir=cluster["jobs_dir"], job_id=job, package=package) as files:
                t0 = time.monotonic()
                async with open_detached_partition_lease(conn, device=0, fraction=0.1, duration=120, job_id=job,
                                                         lease_dir=files.lease_dir, ttl=TTL) as lease:
                    timings["detached_start"] = time.monotonic() - t0
                    req = ServiceRequest(
                        job_id=job, supervisor_id="test-lease", node_id=node["node_id"], image=cluster["image_id"],
                        device_index=0, partition_id=lease.partition_id, code_dir=files.code_dir,
                        output_dir=files.output_dir, lease_dir=files.lease_dir, user=worker_user(),
                    )
                    last_renew = [time.monotonic()]

                    async def renew_until(deadline_event: trio.Event) -> None:
                        while not deadline_event.is_set():
                            assert await renew_leases(conn, {job: (files.lease_dir, lease.holder_pid)}) == set()
                            last_renew[0] = time.monotonic()
                            with trio.move_on_after(1.0):
                                await deadline_event.wait()

                    async with open_service(swarm, req) as created:
                        stop_renewing = trio.Event()
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(renew_until, stop_renewing)
                            # running, and the job's function started (its child too)
                            with trio.fail_after(30):
                                while True:
                                    tasks = [t for t in await swarm.task_states({LABEL_JOB: job})
                                             if t.service_id == created.id]
                                    assert not (tasks and tasks[0].terminal), tasks
                                    if tasks and tasks[0].state == "running":
                                        logs = await trio.to_thread.run_sync(
                                            lambda: worker_docker.logs(tasks[0].container_id).decode())
                                        if "sleeping" in logs:
                                            break
                                    await trio.sleep(0.1)
                            task = tasks[0]
                            assert "lease watchdog on /cumulus/lease" in logs
                            await trio.sleep(2 * TTL)  # renewed past the TTL: still running
                            tasks = [t for t in await swarm.task_states({LABEL_JOB: job}) if t.service_id == created.id]
                            assert tasks[0].state == "running" and alive(lease.holder_pid)
                            stop_renewing.set()
                        t_last = last_renew[0]
                        # Renewals stopped: holder expires (<= TTL + ~0.5 s), runner kills the job (<= 0.5 s),
                        # the task ends.
                        with trio.fail_after(TTL + 6):
                            while True:
                                tasks = [t for t in await swarm.task_states({LABEL_JOB: job})
                                         if t.service_id == created.id]
                                if tasks[0].terminal:
                                    break
                                await trio.sleep(0.05)
                        timings["renewals_stop_to_task_end"] = time.monotonic() - t_last
                        t_end_wall = time.time()
                        assert tasks[0].state in ("failed", "complete"), tasks
                        assert tasks[0].exit_code == 137, tasks
                        state = (await trio.to_thread.run_sync(worker_docker.inspect_container,
                                                               task.container_id))["State"]
                        assert not state["Running"]
                        expired_at = float(Path(f"{files.lease_dir}/expired").read_text().split()[-2])
                        timings["expired_to_task_end"] = t_end_wall - expired_at
                        logs = (await trio.to_thread.run_sync(worker_docker.logs, task.container_id)).decode()
                        assert "[cumulus] partition lease expired: stopping the job" in logs
                        assert not alive(lease.holder_pid)
                        assert not (LOCKS / f"{lease.partition_id}.lock").exists()
                        assert await files.fetch_result(1 << 20) is None
                        # A restarted supervisor takes the service over and removes it.
                        async with adopt_service(swarm, created.name, job) as adopted:
                            assert adopted.id == created.id
                        assert adopted.removal_confirmed
                    assert timings["renewals_stop_to_task_end"] <= TTL + 3, timings
                assert lease.released
    worker_docker.close()
    await swarm.aclose()
    # the job's own child process (sleep 61) died with it
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == "sleep 61"]
    print("\ntimings:", {k: round(v, 3) for k, v in timings.items()})


def _cmdline(p: Path) -> str:
    try:
        return p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
