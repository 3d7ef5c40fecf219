"""One-command worker join on the real local cluster (issue 15, "Done when"), exactly as an operator does it:
``cumulus local add-node`` makes a host with nothing of Cumulus, ``cumulus worker join-command`` (the real CLI, the
local cluster's admin token) prints the line, and the line runs as printed on that host (``cumulus local exec NAME
-- bash -c LINE``, the local stand-in for typing it in ``ssh root@host``). The test prints the seconds from running
the line to the host being Ready in ``cumulus workers`` (must be under 300), checks that the token went into no
other process's command line or environment and into no file, that the used line is refused, that a new line on
the joined host joins it again without a second node, that a job placed there (the other workers drained) returns
its result, and that an SSH host key other than the pinned one makes the worker unhealthy with a host-key message.
Afterwards the host is removed (``cumulus worker remove``, ``cumulus local remove-node``) and the cluster has its
workers again. Refused joins (forged, expired, revoked, reused tokens, another host key): test_cluster_join_refused.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from join_tools import (add_node, cumulus, files_with, forget, host_key_of, host_swarm_state, join_line, labels_of,
                        local_client_config, local_state_dir, refusal, run_on, swarm_snapshot, token_in, TokenWatch,
                        wait_for, workers)

pytestmark = pytest.mark.cluster

READY_LIMIT = 300.0  # the "under 5 minutes", from running the line to Ready
JOB_TIMEOUT = 300.0  # the first job on a new worker also waits for the worker image to reach it
CHANGING_LABELS = ("cumulus.joined_at", "cumulus.worker_image")  # a join again stamps the time; the image gate


def double(x):
    return 2 * x


@pytest.fixture
def new_node(cluster):
    workers_before = sorted(workers())
    ids_before = set(swarm_snapshot())
    node = add_node()
    try:
        yield node
    finally:
        problems = forget(node)
        assert not problems, problems
        assert set(swarm_snapshot()) == ids_before
        wait_for(lambda: sorted(workers()) == workers_before, 60, f"`cumulus workers` to list {workers_before}")


def stable(labels: dict) -> dict:
    """The labels a second join must leave as they were: not its time, not the image gate's, and the inventory
    without each device's memory (PoCL's CPU device reports the memory free at the moment: it moves)."""
    kept = {k: v for k, v in labels.items() if k not in CHANGING_LABELS}
    kept["cumulus.devices"] = [{k: v for k, v in device.items() if k != "memory_bytes"}
                               for device in json.loads(kept["cumulus.devices"])]
    return kept


def ready(name: str):
    worker = workers().get(name)
    return worker if worker and worker["state"] == "ready" and worker["healthy"] else None


def test_the_printed_line_makes_a_fresh_host_a_worker_that_runs_jobs(new_node, capsys):
    name = new_node["name"]
    assert host_swarm_state(new_node) == "inactive" and name not in workers()
    assert not Path(new_node["worker_json"]).exists()
    before = swarm_snapshot()
    line = join_line()
    token = token_in(line)

    with TokenWatch(token, line) as watch:
        started = time.monotonic()
        res = run_on(new_node, line)
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
        worker = wait_for(lambda: ready(name), READY_LIMIT, f"{name} Ready in `cumulus workers`", interval=0.25)
        seconds = time.monotonic() - started
    with capsys.disabled():
        print(f"\njoin: {seconds:.1f} s from running the line on {name} to Ready in `cumulus workers` "
              f"(the line itself: {res.stdout.splitlines()[-1]})")
    assert seconds < READY_LIMIT
    assert res.stdout.splitlines()[-1].startswith("join: done in "), res.stdout
    assert not watch.leaks, watch.leaks
    node_dir = Path(new_node["worker_json"]).parent
    assert not list(Path("/tmp").glob("cumulus-join.*"))  # join.sh's private temporary directory is gone
    assert not files_with(token, [Path("/tmp"), Path("/var/tmp")], depth=0)
    assert not files_with(token, [Path("/etc"), Path("/opt/cumulus/bin"), Path("/opt/cumulus/lib"), node_dir,
                                  local_state_dir() / "supervisor.log"], skip=(str(node_dir / "docker"),))

    # The Swarm: one node more, labelled by the supervisor with the host key it registered; the others untouched.
    after = swarm_snapshot()
    (node_id,) = set(after) - set(before)
    assert {k: after[k] for k in before} == before
    assert worker["node_id"] == node_id and worker["ssh_address"] == f"{new_node['address']}:22"
    labels = labels_of(node_id)
    assert labels["cumulus.worker"] == "true" and labels["cumulus.ssh"] == f"{new_node['address']}:22"
    assert labels["cumulus.host_key"] == host_key_of(new_node)

    # The same line again: its token is used, refused, and nothing changes.
    message = refusal(run_on(new_node, line))
    assert "PERMISSION_DENIED" in message and "used" in message, message
    assert swarm_snapshot() == after

    # A new line on the joined host joins it again: the same node, the same labels but the time of joining.
    res = run_on(new_node, join_line())
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    again = swarm_snapshot()
    assert set(again) == set(after)
    assert stable(labels_of(node_id)) == stable(labels)
    wait_for(lambda: ready(name), 60, f"{name} Ready again")

    run_a_job_there(name)
    unhealthy_while_its_host_key_differs(new_node)


def run_a_job_there(name: str) -> None:
    """With every other worker drained, a job goes to the new one and its result comes back."""
    from cumulus.client.client import CumulusClient
    from cumulus.client.connection import load_client_config

    others = [w for w in workers() if w != name]
    try:
        for other in others:
            cumulus("worker", "drain", other)
        config = load_client_config(environ={"CUMULUS_CONFIG": str(local_client_config())})
        with CumulusClient(config=config, log_to_driver=False) as client:
            ref = client.submit_call(double, (21,), gpu=0.25, duration=300)
            assert ref.result(timeout=JOB_TIMEOUT) == 42
            info = client.status(ref.job_id)
        assert info.worker == name and info.state == "COMPLETED", info
        placed = cumulus("describe", ref.job_id).stdout
        assert f"placed on {name}" in placed, placed
    finally:
        for other in others:
            cumulus("worker", "activate", other, check=False)


def unhealthy_while_its_host_key_differs(node: dict) -> None:
    """The node's sshd gets another host key: the supervisor refuses it (the pinned key is the registered one) and
    says so in `cumulus workers`; with the key restored the worker is healthy again."""
    from cumulus.local import daemons, netns, state
    from cumulus.local.util import kill_pids, pid_cmdline, run

    host = state.Node(int(node["name"][len(state.NETNS_PREFIX):]))
    saved = {path: path.read_bytes() for path in (host.host_key, host.host_key.with_suffix(".pub"))}

    def restart_sshd() -> None:  # every sshd of the node, the supervisor's open sessions too
        kill_pids([pid for pid in netns.netns_pids(host.name) if "sshd" in " ".join(pid_cmdline(pid)[:1])],
                  signal.SIGTERM, wait=5)
        daemons.start_sshd(host)
        daemons.wait_sshd(host)

    try:
        for path in saved:
            path.unlink()
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "another key", "-f", str(host.host_key)])
        restart_sshd()

        def refused():
            worker = workers().get(node["name"])
            return worker if worker and not worker["healthy"] and "host key" in worker["reason"].lower() else None

        worker = wait_for(refused, 120, f"{node['name']} unhealthy with a host-key message")
        assert worker["reason"], worker
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
        os.chmod(host.host_key, 0o600)
        restart_sshd()
    wait_for(lambda: ready(node["name"]), 120, f"{node['name']} healthy again with its own host key")
