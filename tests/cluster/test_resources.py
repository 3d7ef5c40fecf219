"""cumulus.resources against the real local cluster: SSH, partition leases, job files, Swarm services and logs.

Each test opens its own asyncio bridge (asyncssh) and uses unique job ids, so it can run next to other suites.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import asynccontextmanager

import docker
import pytest
import trio

from cumulus.asyncio_bridge import open_asyncio_bridge
from cumulus.errors import InvalidRequest
from cumulus.resources.files import list_job_dirs, open_job_files, remove_job_dir
from cumulus.resources.partition import PartitionError, find_holders, kill_holder, open_partition_lease
from cumulus.resources.ssh import RemoteCommandFailed, RemoteFileTooLarge, SshError, open_ssh_connection
from cumulus.resources.swarm import (
    LABEL_JOB, ServiceRequest, SwarmClient, follow_logs, open_service,
)


def worker_user() -> str:
    """uid:gid of the workers' SSH user (the local cluster's workers share this machine's user database): jobs run
    as it."""
    import pwd

    user = pwd.getpwnam("cumulus")
    return f"{user.pw_uid}:{user.pw_gid}"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def connect(cluster: dict, node: dict, known_hosts: str | None = None):
    host, port = node["ssh"].rsplit(":", 1)
    async with open_ssh_connection(host, int(port), user=cluster["ssh_user"], key_path=cluster["ssh_key"],
                                   known_hosts_path=known_hosts or cluster["known_hosts"]) as conn:
        yield conn


async def available(conn, device: int = 0) -> dict:
    res = await conn.run(f"/opt/cumulus/bin/cumulus-chronos-available --device {device}")
    return json.loads(res.stdout)


async def pgrep(conn, pattern: str) -> list[str]:
    res = await conn.run(f"pgrep -x -f -- {pattern!r} || true")  # exact: not the wrapper or this shell
    return res.stdout.split()


# ------------------------------------------------------------------------------------------------------- ssh
async def test_ssh_run_and_pinned_host_key(cluster, workers, tmp_path):
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn:
            res = await conn.run("echo hello; echo oops >&2; id -un")
            assert res.exit_status == 0 and res.stdout.split() == ["hello", cluster["ssh_user"]]
            assert res.stderr.strip() == "oops"
            assert (await conn.run("exit 3", check=False)).exit_status == 3
            with pytest.raises(RemoteCommandFailed, match="status 3"):
                await conn.run("exit 3")
            with pytest.raises(SshError, match="timed out"):
                await conn.run("sleep 5", timeout=0.3)
            assert await conn.is_alive()
            assert await conn.get_bytes("/etc/hostname", 100)
        # A known_hosts file that pins another key for this address must be refused.
        other = next(n for n in cluster["nodes"] if n["host_key"] and n is not workers[0]) if len(workers) > 1 else None
        bad_key = other["host_key"] if other else "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOxn/a5P2npe2qnaR6TBJZD/HHM2vh8k+R/Kk/hkqXNX"
        kh = tmp_path / "known_hosts"
        kh.write_text(f"{workers[0]['address']} {bad_key}\n")
        with pytest.raises(SshError, match="connect"):
            async with connect(cluster, workers[0], known_hosts=str(kh)):
                pass


async def test_open_process_stopped_on_exit_and_on_cancel(cluster, workers):
    marker = str(uuid.uuid4().int % 900000 + 100000)  # numeric: it is part of a sleep duration
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn, connect(cluster, workers[0]) as probe:
            # normal exit
            async with conn.open_process(f"echo ready; exec sleep 1{marker}") as proc:
                assert await proc.readline() == "ready"
                assert await pgrep(probe, f"sleep 1{marker}")
            assert not await pgrep(probe, f"sleep 1{marker}")
            # cancellation of the enclosing scope; a command that ignores SIGTERM is SIGKILLed by the wrapper
            with trio.move_on_after(0.5):
                async with conn.open_process(
                    f"trap '' TERM; echo ready; sleep 2{marker}; sleep 2{marker}", stop_grace=0.5
                ) as proc:
                    assert await proc.readline() == "ready"
                    await trio.sleep_forever()
            with trio.fail_after(5):
                while await pgrep(probe, f"sleep 2{marker}"):
                    await trio.sleep(0.1)
            # stdin/stdout round trip, EOF ends the command
            async with conn.open_process("cat") as proc:
                await proc.write("abc\n")
                assert await proc.readline() == "abc"
                await proc.close_stdin()
                assert await proc.readline() is None
                assert await proc.wait(5) == 0
            # the connection dropping stops the command too (the wrapper sees stdin EOF)
            async with connect(cluster, workers[0]) as doomed:
                async with doomed.open_process(f"echo ready; exec sleep 3{marker}", stop_grace=0.5) as proc:
                    assert await proc.readline() == "ready"
                    doomed._conn.abort()
            with trio.fail_after(5):
                while await pgrep(probe, f"sleep 3{marker}"):
                    await trio.sleep(0.1)


# ------------------------------------------------------------------------------------------------ partitions
async def test_partition_lease_lifecycle(cluster, workers):
    job = uid("lease")
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn:
            async with open_partition_lease(conn, device=0, fraction=0.25, duration=60, job_id=job,
                                            holder=cluster["holder"]) as lease:
                assert lease.partition_id.startswith("partition_") and lease.device == 0
                assert lease.fraction == 0.25 and not lease.lost.is_set()
                await conn.run(f"kill -0 {lease.holder_pid}")
                assert lease.partition_id in (await available(conn))["lock_files"]
                holders = {h.pid: h for h in await find_holders(conn)}
                assert holders[lease.holder_pid].job_id == job
                assert holders[lease.holder_pid].partition_id == lease.partition_id
            assert lease.released and not lease.lost.is_set()
            assert (await conn.run(f"kill -0 {lease.holder_pid}", check=False)).exit_status != 0
            assert lease.partition_id not in (await available(conn))["lock_files"]

            # cancellation of the enclosing scope releases too
            with trio.move_on_after(1):
                async with open_partition_lease(conn, device=0, fraction=0.5, duration=60, job_id=job) as lease2:
                    await trio.sleep_forever()
            assert lease2.released
            assert (await conn.run(f"kill -0 {lease2.holder_pid}", check=False)).exit_status != 0
            after = await available(conn)
            assert after["available_percent"] == 100.0 and lease2.partition_id not in after["lock_files"]
            assert job not in {h.job_id for h in await find_holders(conn)}

            for device, fraction, msg in ((7, 0.5, "Invalid device index: 7"), (0, 1.5, "between 0 and 1")):
                with pytest.raises(PartitionError, match=msg):
                    async with open_partition_lease(conn, device=device, fraction=fraction, duration=60,
                                                    job_id=job):
                        pass

            # expiry is reported through lease.lost
            async with open_partition_lease(conn, device=0, fraction=0.1, duration=1, job_id=job) as lease3:
                with trio.fail_after(5):
                    await lease3.lost.wait()
                assert lease3.lost_reason == "partition expired"


async def test_orphan_holder_reaped(cluster, workers):
    job = uid("orphan")
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn:
            # A holder that is not ours to end (started with nohup, detached from any session). Its stdin is a
            # FIFO opened read-write, which never reaches EOF (with /dev/null it would release and exit at once).
            await conn.run(f"f=$(mktemp -u) && mkfifo -m 600 $f && {{ nohup setsid {cluster['holder']} --device 0"
                           f" --fraction 0.1 --duration 60 --job-id {job} <>$f >/dev/null 2>&1 & }}; sleep 0.1;"
                           f" rm -f $f")
            with trio.fail_after(10):
                while not (orphans := [h for h in await find_holders(conn) if h.job_id == job]):
                    await trio.sleep(0.1)
            assert await kill_holder(conn, orphans[0].pid)
            assert job not in {h.job_id for h in await find_holders(conn)}
            assert await kill_holder(conn, orphans[0].pid)  # already gone = done


# ------------------------------------------------------------------------------------------------- job files
async def test_job_files(cluster, workers):
    job = uid("files")
    jobs_dir = cluster["jobs_dir"]
    async with open_asyncio_bridge():
        async with connect(cluster, workers[0]) as conn:
            async with open_job_files(conn, jobs_dir=jobs_dir, job_id=job, package=b"PK-zip-bytes") as files:
                assert files.job_dir == f"{jobs_dir}/{job}"
                modes = (await conn.run(f"stat -c '%a %n' {files.code_dir}/package.zip {files.output_dir} "
                                        f"{files.code_dir}")).stdout
                assert modes.split() == ["444", f"{files.code_dir}/package.zip", "700", files.output_dir,
                                         "555", files.code_dir]
                assert await conn.get_bytes(f"{files.code_dir}/package.zip", 100) == b"PK-zip-bytes"
                assert await files.fetch_result(1000) is None
                await conn.run(f"printf result > {files.output_dir}/result.msgpack")
                assert await files.fetch_result(1000) == b"result"
                with pytest.raises(RemoteFileTooLarge, match="is 6 bytes, over the limit of 3 bytes"):
                    await files.fetch_result(3)
                assert job in await list_job_dirs(conn, jobs_dir)
            assert (await conn.run(f"test -e {files.job_dir}", check=False)).exit_status != 0
            await remove_job_dir(conn, jobs_dir, job)  # idempotent
            with pytest.raises(InvalidRequest):
                await remove_job_dir(conn, jobs_dir, "../etc")
            # cancellation removes too
            with trio.move_on_after(0.5):
                async with open_job_files(conn, jobs_dir=jobs_dir, job_id=job, package=b"x"):
                    await trio.sleep_forever()
            assert job not in await list_job_dirs(conn, jobs_dir)


# ---------------------------------------------------------------------------------------------------- swarm
RUNNER = (
    "import sys, time\n"
    "print('first', open('/cumulus/code/package.zip').read(), flush=True)\n"
    "print('to stderr', file=sys.stderr, flush=True)\n"
    "time.sleep(2)\n"
    "open('/cumulus/output/result.msgpack', 'w').write('done')\n"
    "print('second', open('/proc/net/dev').read().count(':'), flush=True)\n"
    "time.sleep(300)\n"
)


async def _job_on(cluster, node, swarm: SwarmClient, timings: dict) -> None:
    job = uid("svc")
    worker_docker = docker.APIClient(base_url=f"unix://{node['docker_socket']}", version="auto")
    async with connect(cluster, node) as conn:
        async with open_job_files(conn, jobs_dir=cluster["jobs_dir"], job_id=job, package=b"pkg") as files:
            req = ServiceRequest(
                job_id=job, supervisor_id="test-resources", node_id=node["node_id"], image=cluster["image_id"],
                device_index=0, partition_id="partition_test", code_dir=files.code_dir, output_dir=files.output_dir,
                env={"USER_VAR": "1"}, command=["python3", "-c", RUNNER], user=worker_user(),
            )
            t0 = time.monotonic()
            async with open_service(swarm, req) as svc:
                assert svc.name == f"cumulus-{job}"
                with trio.fail_after(20):
                    while True:
                        tasks = [t for t in await swarm.task_states({LABEL_JOB: job}) if t.service_id == svc.id]
                        if tasks and tasks[0].state == "running":
                            break
                        assert not (tasks and tasks[0].terminal), tasks
                        await trio.sleep(0.05)
                timings.setdefault("create_to_running", []).append(time.monotonic() - t0)
                task = tasks[0]
                assert task.node_id == node["node_id"] and task.job_id == job
                info = await trio.to_thread.run_sync(worker_docker.inspect_container, task.container_id)
                assert info["HostConfig"]["Init"] is True
                assert info["Config"]["Labels"][LABEL_JOB] == job
                assert "USER_VAR=1" in info["Config"]["Env"] and f"CUMULUS_JOB_ID={job}" in info["Config"]["Env"]

                got = []
                with trio.fail_after(20):
                    async with follow_logs(swarm, svc.id) as lines:
                        async for stream, line in lines:
                            got.append((time.monotonic(), stream, line))
                            if line.startswith("second"):
                                break
                        t_close = time.monotonic()
                timings.setdefault("logs_close", []).append(time.monotonic() - t_close)
                texts = [(s, line) for _, s, line in got]
                assert ("stdout", "first pkg") in texts and ("stderr", "to stderr") in texts
                assert ("stdout", "second 1") in texts  # only `lo`: no network
                first = next(t for t, _, line in got if line.startswith("first"))
                second = next(t for t, _, line in got if line.startswith("second"))
                assert second - first > 1.5  # streamed while running, not at the end
                assert await files.fetch_result(100) == b"done"
                t_rm = time.monotonic()
            timings.setdefault("remove_to_gone", []).append(time.monotonic() - t_rm)
            assert svc.removal_confirmed
            try:
                state = (await trio.to_thread.run_sync(worker_docker.inspect_container, task.container_id))["State"]
                assert not state["Running"]
            except docker.errors.NotFound:
                pass
            assert not await swarm.list_services({LABEL_JOB: job})
            assert await swarm.remove_service(svc.id) is False  # idempotent
    worker_docker.close()


async def test_services_on_each_worker(cluster, workers):
    swarm = SwarmClient(f"unix://{cluster['manager_socket']}")
    nodes = {n.id: n for n in await swarm.list_nodes()}
    for w in workers:
        assert nodes[w["node_id"]].ready and nodes[w["node_id"]].role == "worker"
    timings: dict = {}
    async with open_asyncio_bridge():
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(_job_on, cluster, w, swarm, timings)
    await swarm.aclose()
    print("timings:", {k: [round(v, 3) for v in vs] for k, vs in timings.items()})
    assert all(t < 1.0 for t in timings["logs_close"])
    assert all(t < 10.0 for t in timings["remove_to_gone"])


async def test_follow_logs_of_silent_service_closes_promptly(cluster, workers):
    job = uid("quiet")
    swarm = SwarmClient(f"unix://{cluster['manager_socket']}")
    req = ServiceRequest(
        job_id=job, supervisor_id="test-resources", node_id=workers[-1]["node_id"], image=cluster["image_id"],
        device_index=0, partition_id="p", code_dir="/tmp", output_dir="/tmp",
        command=["python3", "-c", "import time; time.sleep(300)"], user=worker_user(),
    )
    async with open_service(swarm, req) as svc:
        # Nothing is ever printed: the reader thread is blocked in recv() when we leave.
        async with follow_logs(swarm, svc.id) as lines:
            with trio.move_on_after(0.5):
                async for _ in lines:
                    pass
            t0 = time.monotonic()
        assert time.monotonic() - t0 < 1.0
        # cancellation from outside while iterating
        t0 = time.monotonic()
        with trio.move_on_after(0.3):
            async with follow_logs(swarm, svc.id) as lines:
                async for _ in lines:
                    pass
        assert time.monotonic() - t0 < 1.5
    assert svc.removal_confirmed
    await swarm.aclose()
