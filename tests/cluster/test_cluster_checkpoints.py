"""Checkpoints, pause and resume on the real local cluster (issue 18), through a REAL ``cumulus supervisor`` process
and the example ``examples/checkpointed_training.py``, whose value after N steps is deterministic:

* paused at step k, the job holds nothing (no service, container, partition holder, job dir or share); resumed
  while its first worker is drained, it goes on from step >= k on the other worker and ends with the value of an
  unbroken run;
* its worker killed mid-run (``cumulus local kill-node``), the retry goes on from the last checkpoint (not from
  step 0) on the other worker, with the same final value.

The job's own log says where each attempt started ("resuming at step k"), and its history has the checkpoint
events (the step saved, the step an attempt starts from).
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path
from typing import Any

import pytest

import cumulus
from cumulus.local import cluster as local_cluster

from helpers import cluster_description, holder_processes, job_dirs, lingering_containers, swarm_services
from supervisor_process import remote_supervisor  # noqa: F401  (the module-scoped fixture)

EXAMPLE = Path(cumulus.__file__).resolve().parent.parent / "examples" / "checkpointed_training.py"
JOB_TIMEOUT = 240.0
TOTAL_STEPS = 60
STEP_SECONDS = 0.3
SAVE_EVERY = 5


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("checkpointed_training", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sup(remote_supervisor):  # noqa: F811
    assert remote_supervisor.alive(), remote_supervisor.log_tail()
    return remote_supervisor


def wait_for(what: str, check: Any, timeout: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def submit_training(client: Any, example: Any) -> Any:
    return client.submit_call(example.train.__wrapped__, (TOTAL_STEPS, SAVE_EVERY, STEP_SECONDS), gpu=0.25,
                              duration=600, retries=2, log_to_driver=False)


def attempts_logged(ref: Any) -> list[list[int]]:
    """The steps each attempt printed, per attempt (a "resuming at step k" line starts a new one, with k first)."""
    attempts: list[list[int]] = [[]]
    for line in ref.logs():
        if match := re.match(r"resuming at step (\d+)", line):
            attempts.append([int(match.group(1))])
        elif match := re.match(r"step (\d+) value", line):
            attempts[-1].append(int(match.group(1)))
    return attempts


def held_by(sup: Any, client: Any, job_id: str) -> list[str]:
    """What of a job exists outside the supervisor: services, containers, partition holders, job dirs, shares."""
    desc = cluster_description()
    held = [f"service {s}" for s in swarm_services(sup.sid, desc, idle_warm=False)]
    held += [f"container {c}" for c in lingering_containers([job_id], desc)]
    held += [f"holder {p}" for p in holder_processes([job_id])]
    held += [f"job dir {d}" for d in job_dirs([job_id], desc.get("jobs_dir", "/var/lib/cumulus/jobs"))]
    held += [f"{w.hostname} device {d.index} share {d.used_share}" for w in client.list_workers()
             for d in w.devices if d.used_share > 1e-9]
    return held


def test_paused_job_resumes_on_the_other_worker_with_the_same_value(sup, example):
    expected = example.train.__wrapped__(TOTAL_STEPS, SAVE_EVERY, 0)
    with sup.client() as client:
        ref = submit_training(client, example)
        first = wait_for("a checkpoint of step >= 10", lambda: (lambda i: i if (i.checkpoint_step or 0) >= 10
                                                                else None)(ref.status()), JOB_TIMEOUT)
        paused = ref.pause(grace=30)
        assert paused.state == "PAUSED" and paused.was_running, paused
        k = paused.status.checkpoint_step
        assert k is not None and k >= first.checkpoint_step, paused.status
        assert held_by(sup, client, ref.job_id) == [], "a paused job holds nothing"
        worker = first.worker
        other = next(h for h in sup.worker_hostnames if h != worker)
        sup.cli("worker", "drain", worker, check_rc=0)
        try:
            info = ref.resume()
            assert info.state != "PAUSED" and info.checkpoint_step == k, info
            value = ref.result(JOB_TIMEOUT)
        finally:
            sup.cli("worker", "activate", worker, check_rc=0)
        status = ref.status()
        assert value == expected, f"a paused and resumed run gives {value}, an unbroken one {expected}"
        assert status.worker == other and status.attempt == 2, status
        before, after = attempts_logged(ref)  # the second starts with the step it resumed at, then its own steps
        assert before[0] == 0 and before[-1] >= k - 1, before
        assert after[0] == k and after[1] == k and after[-1] == TOTAL_STEPS - 1, after
        events = client.describe(ref.job_id).events
        assert any(e.kind == "checkpoint" and f"starts from the checkpoint of step {k}" in e.text
                   for e in events), [e.text for e in events]
        assert any(e.kind == "state" and e.state == "PAUSED" for e in events), [e.text for e in events]
    sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "COMPLETED"})


def test_killed_node_retry_goes_on_from_the_last_checkpoint(sup, example, cluster):
    expected = example.train.__wrapped__(TOTAL_STEPS, SAVE_EVERY, 0)
    with sup.client() as client:
        ref = submit_training(client, example)
        info = wait_for("a checkpoint of step >= 10", lambda: (lambda i: i if (i.checkpoint_step or 0) >= 10
                                                               else None)(ref.status()), JOB_TIMEOUT)
        victim = next(n for n in cluster["nodes"] if n["hostname"] == info.worker)
        try:
            sup.cli("local", "kill-node", str(victim["index"]), address=False, check_rc=0)
            value = ref.result(JOB_TIMEOUT)
        finally:
            result = sup.cli("local", "revive-node", str(victim["index"]), address=False)
            if result.returncode != 0:  # never leave the cluster with a dead node
                local_cluster.revive_node(victim["index"], wait=True, timeout=90, quiet=True)
        status = ref.status()
        assert value == expected, f"a run retried after its node died gives {value}, an unbroken one {expected}"
        assert status.attempt == 2 and status.worker != info.worker, status
        attempts = attempts_logged(ref)
        assert len(attempts) == 2 and attempts[0][0] == 0, attempts
        assert attempts[1][0] >= info.checkpoint_step and attempts[1][-1] == TOTAL_STEPS - 1, attempts
        events = client.describe(ref.job_id).events
        assert any(e.kind == "retry" and "node_lost" in e.text for e in events), [e.text for e in events]
        assert any(e.kind == "checkpoint" and "starts from the checkpoint" in e.text for e in events), \
            [e.text for e in events]
    sup.wait_workers(sup.worker_hostnames, timeout=90)
    # The first attempt's teardown could not reach its dead node: its report says so. Once the node is back, its
    # worker reaps what was left there: nothing of the job may remain.
    problems = sup.leftovers([ref.job_id], expect={ref.job_id: "COMPLETED"}, settle=60)
    assert [p for p in problems if "teardown leaked" not in p] == [], problems
    assert all("connection" in p for p in problems), problems
