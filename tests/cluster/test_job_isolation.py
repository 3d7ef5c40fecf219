"""Job isolation on the real local cluster: a real job reports, from inside its container, that it runs as the
worker's non-root SSH user with no capabilities, no new privileges, a read-only root, a writable /tmp (HOME), its
pids and memory limits, a private 0700 output dir - and that it cannot open a TCP connection to the cluster: the
manager (Swarm 2377 and gossip 7946), another worker's and its own host's SSH, nor a port on the host bridge (a
stand-in for a supervisor that listens on the cluster network). For ``network="internet"`` the job has an interface
and the worker's egress filter rejects each of those (so the failure is the filter, not a missing route); for
``network="none"`` it has no interface but ``lo``. The supervisor's isolation probe passes on every set-up worker
and fails, saying why, in a network namespace without the filter."""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
from contextlib import asynccontextmanager

import pytest
import trio

from cumulus.app import open_supervisor
from cumulus.client.packaging import build_package, decode_result
from cumulus.config import load_settings
from cumulus.jobs import JobSpec, JobState
from cumulus.resources.job_network import CHECK_TOOL, probe_worker
from cumulus.resources.ssh import open_ssh_connection
from cumulus.asyncio_bridge import open_asyncio_bridge

from cumulus.local.state import BRIDGE_ADDR
from helpers import wait_workers_healthy

SID = f"ti-{secrets.token_hex(4)}"
MEMORY = 512 << 20
PIDS = 321


def inside(targets):
    """Runs in the job container: what it is allowed to do, as plain data."""
    import errno
    import os
    import socket

    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)

    def first(*paths):
        for path in paths:
            if os.path.exists(path):
                return open(path).read().strip()
        return None

    report = {
        "uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
        "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
        "home": os.environ.get("HOME"), "interfaces": sorted(os.listdir("/sys/class/net")),
        "pids_max": first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
        "memory_max": first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    }
    try:
        open("/cumulus-was-here", "w")
        report["root_write"] = "allowed"
    except OSError as error:
        report["root_write"] = errno.errorcode.get(error.errno, str(error.errno))
    with open("/tmp/scratch", "w") as f:
        f.write("ok")
    report["tmp_write"] = open("/tmp/scratch").read()
    out = os.stat("/cumulus/output")
    report["output"] = (oct(out.st_mode & 0o7777), out.st_uid)
    connects = {}
    for host, port in targets:
        s = socket.socket()
        s.settimeout(10)
        try:
            s.connect((host, port))
            connects[f"{host}:{port}"] = "CONNECTED"
        except OSError as error:
            connects[f"{host}:{port}"] = errno.errorcode.get(error.errno, type(error).__name__)
        finally:
            s.close()
    report["connects"] = connects
    return report


@asynccontextmanager
async def supervisor(worker_count: int):
    settings = load_settings(environ={}, overrides={
        "supervisor_id": SID, "cluster.allow_non_gpu_devices": True, "cluster.poll_interval": 0.1,
        "containers.pids_limit": PIDS})
    async with open_supervisor(settings, serve_rpc=False) as api:
        await wait_workers_healthy(api, worker_count)
        yield api


@pytest.fixture
def bridge_listener(cluster):
    """A TCP port on the host side of the cluster bridge (10.213.0.1): where a supervisor listening on the
    cluster network would be."""
    s = socket.socket()
    s.bind((BRIDGE_ADDR, 0))
    s.listen(16)
    yield s.getsockname()
    s.close()


@pytest.mark.parametrize("network", ["internet", "none"])
async def test_a_job_is_confined(cluster, workers, bridge_listener, network):
    manager = next(n for n in cluster["nodes"] if n["role"] == "manager")
    # every worker's SSH: the job's own host and the others (where it lands is the Scheduler's choice)
    targets = [(manager["address"], 2377), (manager["address"], 7946), tuple(bridge_listener)] + [
        (w["address"], 22) for w in workers]
    ssh_user = pwd.getpwnam(cluster["ssh_user"])
    async with supervisor(len(workers)) as sup:
        record = await sup.submit(JobSpec(package=build_package(inside, (targets,)), gpu=0.5, duration=120,
                                          memory_bytes=MEMORY, cpus=1.0, network=network))
        with trio.fail_after(90):
            await record.torn_down.wait()
    assert record.state is JobState.COMPLETED, (record.state, record.reason)
    got = decode_result(record.result).value
    print(network, got)
    assert (got["uid"], got["gid"], got["euid"]) == (ssh_user.pw_uid, ssh_user.pw_gid, ssh_user.pw_uid) != 0
    assert got["cap_eff"] == "0000000000000000"
    assert got["no_new_privs"] == "1"
    assert got["root_write"] == "EROFS"
    assert got["tmp_write"] == "ok" and got["home"] == "/tmp"
    assert got["pids_max"] == str(PIDS)
    assert got["memory_max"] == str(MEMORY)
    assert got["output"] == ("0o700", ssh_user.pw_uid)
    if network == "none":
        assert got["interfaces"] == ["lo"]
        assert set(got["connects"].values()) == {"ENETUNREACH"}, got["connects"]
    else:
        assert "eth0" in got["interfaces"]
        # rejected by the egress filter (own host: INPUT, tcp-reset; elsewhere: FORWARD, admin-prohibited)
        for target, outcome in got["connects"].items():
            assert outcome in ("EHOSTUNREACH", "ECONNREFUSED"), (target, outcome, record.placement.worker)


async def test_the_isolation_probe(cluster, workers):
    """Every set-up worker passes (and tells its job identity); a namespace without the filter fails, saying why."""
    ssh_user = pwd.getpwnam(cluster["ssh_user"])
    async with open_asyncio_bridge():
        for w in workers:
            host, _, port = w["ssh"].rpartition(":")
            async with open_ssh_connection(host, int(port), user=cluster["ssh_user"], key_path=cluster["ssh_key"],
                                           known_hosts_path=cluster["known_hosts"]) as conn:
                probe = await probe_worker(conn)
            assert probe.problem == "" and probe.job_user == f"{ssh_user.pw_uid}:{ssh_user.pw_gid}", probe
    # this test's own namespace (the host's) has no job bridge filter: the same check fails with a reason
    res = subprocess.run(["setpriv", f"--reuid={ssh_user.pw_uid}", f"--regid={ssh_user.pw_gid}", "--clear-groups",
                          CHECK_TOOL, "check"], capture_output=True, text=True)
    assert res.returncode == 1 and "no egress filter" in res.stdout, (res.returncode, res.stdout, res.stderr)
    assert os.path.exists(CHECK_TOOL)
