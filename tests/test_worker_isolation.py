"""Job isolation on the supervisor side (fakes): a worker that fails its isolation check gets no jobs and says why;
a job's container request carries the worker's job identity, the job's limits (or the defaults, never above the
maxima) and its network; :func:`probe_worker` turns the worker's answer into an identity and a verdict."""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from cumulus.app import open_supervisor
from cumulus.jobs import JobState
from cumulus.resources.job_network import probe_worker
from cumulus.resources.swarm_spec import build_service_spec
from tests.fakes import fake_cluster as fakes
from tests.test_job_lifecycle import settings, spec


@asynccontextmanager
async def supervisor_with(not_isolated: dict[str, str], **overrides):
    async with trio.open_nursery() as nursery:
        world = fakes.FakeWorld([fakes.fake_node(i + 1, 1) for i in range(2)], nursery)
        world.not_isolated.update(not_isolated)
        async with open_supervisor(settings(**overrides), backends=world.backends(), serve_rpc=False) as sup:
            yield sup, world
        nursery.cancel_scope.cancel()


async def test_a_worker_that_fails_its_isolation_check_gets_no_jobs_and_says_why(autojump_clock):
    why = "job isolation check failed: no egress filter in this network namespace (run setup-worker.sh)"
    async with supervisor_with({"fw2": why}) as (sup, world):
        with trio.fail_after(60):
            while True:
                workers = {w.hostname: w for w in await sup.list_workers()}
                if workers["fw1"].healthy and workers["fw2"].reason:
                    break
                await trio.sleep(1)
        assert not workers["fw2"].healthy and workers["fw2"].reason == why
        records = [await sup.submit(spec(gpu=0.6, runtime=1)) for _ in range(3)]
        with trio.fail_after(120):
            for record in records:
                while record.state is not JobState.COMPLETED:
                    await trio.sleep(0.5)
        assert {r.placement.worker for r in records} == {"fw1"}


async def test_the_container_request_has_the_job_identity_limits_and_network(autojump_clock, monkeypatch):
    seen = []
    original = fakes.FakeSwarm.open_service

    def recording(self, request):
        # a request the real Swarm client accepts (the fakes' image and node ids are not real ones)
        build_service_spec(dataclasses.replace(request, image="sha256:" + "ab" * 32, node_id="a" * 25))
        seen.append(request)
        return original(self, request)

    monkeypatch.setattr(fakes.FakeSwarm, "open_service", recording)
    overrides = {"containers.memory_mb": 1024, "containers.max_memory_mb": 2048, "containers.cpus": 1.0,
                 "containers.max_cpus": 3.0, "containers.pids_limit": 300, "containers.tmpfs_mb": 64,
                 "containers.network": "none", "jobs.warm_per_device": 0}  # every request made for its job
    async with supervisor_with({}, **overrides) as (sup, world):
        with trio.fail_after(60):
            while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                await trio.sleep(0.5)
        default = await sup.submit(spec(runtime=1))
        own = await sup.submit(spec(runtime=1, memory_bytes=1536 << 20, cpus=2.5, network="internet"))
        above = await sup.submit(spec(runtime=1, memory_bytes=8192 << 20, cpus=64.0))  # maxima lowered since
        with trio.fail_after(120):
            for record in (default, own, above):
                while record.state is not JobState.COMPLETED:
                    await trio.sleep(0.5)
    by_job = {r.job_id: r for r in seen}
    d, o, a = by_job[default.job_id], by_job[own.job_id], by_job[above.job_id]
    assert (d.user, d.memory_bytes, d.cpus, d.pids_limit, d.tmpfs_bytes, d.network) == (
        "1001:1001", 1024 << 20, 1.0, 300, 64 << 20, "none")
    assert (o.memory_bytes, o.cpus, o.network) == (1536 << 20, 2.5, "internet")
    assert (a.memory_bytes, a.cpus) == (2048 << 20, 3.0)


@dataclass
class Answer:
    stdout: str
    exit_status: int


class StubConnection:
    label = "stub"

    def __init__(self, stdout: str, status: int) -> None:
        self.answer = Answer(stdout, status)
        self.commands: list[str] = []

    async def run(self, command: str, timeout: float, check: bool) -> Answer:
        self.commands.append(command)
        return self.answer


@pytest.mark.parametrize("stdout,status,override,user,problem", [
    ("1001\n1001\nok: filter v1 on cumulus-jobs\n", 0, "", "1001:1001", ""),
    ("1001\n1002\nok\n", 0, "1001", "1001:1002", ""),
    ("1001\n1001\nok\n", 0, "1001:2000", "1001:2000", ""),
    ("1001\n1001\nno egress filter for this network namespace: run setup-worker.sh\n", 1, "", "1001:1001",
     "job isolation check failed: no egress filter for this network namespace: run setup-worker.sh"),
    ("1001\n1001\nmissing\n", 3, "", "1001:1001", "job isolation: /opt/cumulus/bin/cumulus-job-network is "
     "missing (re-run setup-worker.sh on this worker)"),
    ("1001\n1001\nok\n", 0, "4242", "4242:1001", "containers.user 4242 is not the SSH user's uid 1001"),
    ("0\n0\nok\n", 0, "", "0:0", "the SSH user is root"),
])
async def test_probe_worker(stdout, status, override, user, problem):
    probe = await probe_worker(StubConnection(stdout, status), override)
    assert probe.job_user == user
    assert probe.problem.startswith(problem) and bool(probe.problem) == bool(problem)
