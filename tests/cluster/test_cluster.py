"""The local cluster is a real multi-node Swarm: nodes Ready, pinned SSH, real Chronos partitions, jobs per node,
node loss and recovery."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import asyncssh
import pytest

from cumulus.local import cluster as lc
from cumulus.local import state



def run_async(coro):
    """The suite runs under pytest-trio; asyncssh needs asyncio, so SSH checks run in their own loop."""
    return asyncio.run(coro)


async def _connect(cluster: dict, node: dict, known_hosts: str | None = None) -> asyncssh.SSHClientConnection:
    host, port = node["ssh"].rsplit(":", 1)
    return await asyncssh.connect(host, int(port), username=cluster["ssh_user"],
                                  client_keys=[cluster["ssh_key"]],
                                  known_hosts=known_hosts or cluster["known_hosts"], connect_timeout=10)


async def _ssh(cluster: dict, node: dict, command: str) -> asyncssh.SSHCompletedProcess:
    async with await _connect(cluster, node) as conn:
        return await conn.run(command, check=False, timeout=30)


async def _available(conn, device: int = 0) -> dict:
    r = await conn.run(f"{state.CHRONOS_AVAILABLE} --device {device}", check=True, timeout=30)
    return json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------- nodes
def test_every_node_ready(cluster):
    nodes = cluster["nodes"]
    assert [n["role"] for n in nodes].count("manager") == 1
    assert len(nodes) >= 3
    assert all(n["state"] == "Ready" for n in nodes), [(n["name"], n["state"]) for n in nodes]
    assert len({n["node_id"] for n in nodes}) == len(nodes)
    assert cluster["image_id"].startswith("sha256:")
    for n in nodes:
        if n["role"] == "worker":
            assert n["ssh"] == f"{n['address']}:22" and n["address"].startswith("10.213.0.")
            assert n["inventory"]["devices"], n
            assert all(d["is_gpu"] is False for d in n["inventory"]["devices"])  # PoCL CPU device


def test_status_json_cli(cluster):
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from cumulus.local import cli; import argparse;"
         "p=argparse.ArgumentParser(); c=p.add_subparsers(); cli.register(c);"
         "a=p.parse_args(sys.argv[1:]); sys.exit(a.func(a))", "local", "status", "--json"],
        capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert doc["manager_socket"] == cluster["manager_socket"]
    assert [n["state"] for n in doc["nodes"]] == ["Ready"] * len(doc["nodes"])
    assert all(n["ssh"] for n in doc["nodes"] if n["role"] == "worker")


def test_node_labels_from_setup_json(cluster, docker_manager):
    for n in cluster["nodes"]:
        labels = docker_manager.nodes.get(n["node_id"]).attrs["Spec"]["Labels"]
        if n["role"] == "manager":
            assert labels["cumulus.worker"] == "false"
            continue
        assert labels["cumulus.worker"] == "true"
        assert labels["cumulus.ssh"] == n["ssh"]
        assert labels["cumulus.gpu_count"] == "0"
        assert json.loads(labels["cumulus.devices"])[0]["index"] == 0


# ---------------------------------------------------------------------------------------------- ssh
def test_ssh_as_cumulus_with_pinned_host_key(cluster, workers):
    for node in workers:
        r = run_async(_ssh(cluster, node, "id -un; hostname; test -w /var/lib/cumulus/jobs && echo jobs-ok"))
        assert r.exit_status == 0, r.stderr
        assert r.stdout.split() == ["cumulus", node["hostname"], "jobs-ok"]


def test_ssh_with_wrong_host_key_is_refused(cluster, workers, tmp_path):
    bogus_key = tmp_path / "bogus"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bogus_key)], check=True)
    pub = " ".join(bogus_key.with_suffix(".pub").read_text().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(f"{n['address']} {pub}\n" for n in workers))
    for node in workers:
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            run_async(_connect(cluster, node, known_hosts=str(kh)))
    # the OpenSSH client agrees
    node = workers[0]
    r = subprocess.run(["ssh", "-i", cluster["ssh_key"], "-o", f"UserKnownHostsFile={kh}",
                        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                        f"{cluster['ssh_user']}@{node['address']}", "true"], capture_output=True, text=True)
    assert r.returncode == 255 and "host key" in r.stderr.lower()


def test_ssh_as_root_is_refused(cluster, workers):
    async def go():
        host = workers[0]["address"]
        await asyncssh.connect(host, 22, username="root", client_keys=[cluster["ssh_key"]],
                               known_hosts=cluster["known_hosts"], connect_timeout=10)

    with pytest.raises(asyncssh.PermissionDenied):
        run_async(go())


# ---------------------------------------------------------------------------------------------- chronos
def test_holder_creates_real_partition_and_releases_on_stdin_eof(cluster, workers):
    async def go(node):
        async with await _connect(cluster, node) as conn:
            assert (await _available(conn))["stub_mode"] is False
            proc = await conn.create_process(
                f"{state.HOLDER} --device 0 --fraction 0.5 --duration 120 --job-id t-{uuid.uuid4().hex[:6]}")
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            pid = first["partition_id"]
            assert pid.startswith("partition_") and first["device"] == 0 and first["fraction"] == 0.5
            # the holder's own view: half of the device is taken
            proc.stdin.write("status\n")
            st = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert st["available"] == pytest.approx(50.0)
            assert pid in (await _available(conn))["lock_files"]
            proc.stdin.write("renew 60\n")  # unknown lines are ignored
            proc.stdin.write_eof()
            released = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
            assert released == {"released": pid}
            result = await asyncio.wait_for(proc.wait(), 15)
            assert result.exit_status == 0
            after = await _available(conn)
            assert pid not in after["lock_files"]
            assert after["available_percent"] == pytest.approx(100.0)
            r = await conn.run(f"kill -0 {first['pid']}", check=False)
            assert r.exit_status != 0  # the holder is gone

    for node in workers:
        run_async(go(node))


def test_partition_dies_with_the_ssh_session(cluster, workers):
    node = workers[0]

    async def go():
        conn = await _connect(cluster, node)
        proc = await conn.create_process(f"{state.HOLDER} --device 0 --fraction 0.25 --duration 120")
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        conn.close()  # the supervisor's connection drops (no EOF sent by us)
        await conn.wait_closed()
        async with await _connect(cluster, node) as conn2:
            deadline = time.monotonic() + 15
            while True:
                avail = await _available(conn2)
                gone = (await conn2.run(f"kill -0 {first['pid']}", check=False)).exit_status != 0
                if gone and first["partition_id"] not in avail["lock_files"]:
                    break
                assert time.monotonic() < deadline, (avail, gone)
                await asyncio.sleep(0.2)
            assert avail["available_percent"] == pytest.approx(100.0)
            # the whole device can be taken again
            r = await conn2.run(f"{state.HOLDER} --device 0 --fraction 1.0 --duration 5 </dev/null", timeout=30)
            lines = [json.loads(x) for x in r.stdout.splitlines()]
            assert "partition_id" in lines[0] and lines[-1] == {"released": lines[0]["partition_id"]}

    run_async(go())


def test_holder_sigterm_releases(cluster, workers):
    node = workers[-1]

    async def go():
        async with await _connect(cluster, node) as conn:
            proc = await conn.create_process(f"{state.HOLDER} --device 0 --fraction 0.1 --duration 120")
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            await conn.run(f"kill -TERM {first['pid']}", check=True)
            released = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
            assert released == {"released": first["partition_id"]}
            assert (await asyncio.wait_for(proc.wait(), 15)).exit_status == 0
            assert first["partition_id"] not in (await _available(conn))["lock_files"]

    run_async(go())


def test_holder_reports_chronos_errors(cluster, workers):
    r = run_async(_ssh(cluster, workers[0], f"{state.HOLDER} --device 7 --fraction 0.5 --duration 10"))
    assert r.exit_status == 1
    assert "device" in json.loads(r.stdout)["error"].lower()
    r = run_async(_ssh(cluster, workers[0], f"{state.HOLDER} --device 0 --fraction 1.5 --duration 10"))
    assert r.exit_status == 1 and "fraction" in json.loads(r.stdout)["error"].lower()


# ---------------------------------------------------------------------------------------------- swarm jobs
def _run_pinned_service(client, cluster, node, network="none", timeout=60):
    import docker

    name = f"cumulus-test-{node['name']}-{uuid.uuid4().hex[:6]}"
    svc = client.services.create(
        cluster["image_id"],
        name=name,
        command=["python3", "-c", "import socket; print('cumulus worker image ok on', socket.gethostname())"],
        constraints=[f"node.id=={node['node_id']}"],
        networks=[network] if network == "host" else None,
        init=True,
        restart_policy=docker.types.RestartPolicy(condition="none"),
        labels={"cumulus.test": "true"},
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            tasks = svc.tasks()
            if tasks and tasks[0]["Status"]["State"] in ("complete", "failed", "rejected", "shutdown"):
                break
            assert time.monotonic() < deadline, tasks
            time.sleep(0.2)
        task = tasks[0]
        return task, _container_log_on_its_node(node, task)
    finally:
        svc.remove()


def _container_log_on_its_node(node, task) -> str:
    """The task's container log, read from the node's own dockerd. (Not through the manager: after a network cut,
    as the chaos tests make, Swarm's manager may stop reading a node's logs until that node's dockerd restarts,
    moby/moby#35011; the job relay's handling of that is tested in tests/test_follow_logs.py.)"""
    import docker

    container_id = task["Status"]["ContainerStatus"]["ContainerID"]
    client = docker.DockerClient(base_url=f"unix://{node['docker_socket']}", version="auto", timeout=30)
    try:
        return client.api.logs(container_id, stdout=True, stderr=True).decode()
    finally:
        client.close()


def test_pinned_service_runs_worker_image_on_each_worker(cluster, workers, docker_manager):
    for node in workers:
        task, logs = _run_pinned_service(docker_manager, cluster, node, network="host")
        assert task["Status"]["State"] == "complete", task["Status"]
        assert task["NodeID"] == node["node_id"]
        assert task["Spec"]["ContainerSpec"]["Image"] == cluster["image_id"]
        assert "cumulus worker image ok" in logs, logs


def test_pinned_service_with_no_network(cluster, workers, docker_manager):
    node = workers[0]
    task, logs = _run_pinned_service(docker_manager, cluster, node, network="none")
    assert task["Status"]["State"] == "complete", task["Status"]
    assert "cumulus worker image ok" in logs


# ---------------------------------------------------------------------------------------------- failures
def _state_of(node_id: str) -> str:
    return lc._node_state(node_id)


def test_kill_node_then_revive(cluster, workers):
    node = workers[-1]
    try:
        t0 = time.monotonic()
        lc.kill_node(node["index"], wait=True, timeout=60, quiet=True)
        assert _state_of(node["node_id"]) == "down"
        down_after = time.monotonic() - t0
        with pytest.raises((OSError, asyncssh.Error)):
            run_async(_connect(cluster, node))
        # the other nodes are unaffected
        for other in cluster["nodes"]:
            if other["node_id"] != node["node_id"]:
                assert _state_of(other["node_id"]) == "ready"
    finally:
        lc.revive_node(node["index"], wait=True, timeout=90, quiet=True)
    assert _state_of(node["node_id"]) == "ready"
    r = run_async(_ssh(cluster, node, "id -un"))
    assert r.stdout.strip() == "cumulus"
    print(f"node reported Down {down_after:.1f}s after kill")
