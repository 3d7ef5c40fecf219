"""The worker image gate's logic on in-memory fakes (tests/fakes): a worker is healthy only once its node has the
worker image (its label names the image id), pulls happen once per node, a failure is shown and retried, and the
gate is off without a registry address. The real pull is tests/cluster/test_cluster_image_gate.py."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import trio

from cumulus.actors import image_gate
from cumulus.actors.image_gate import LABEL_WORKER_IMAGE, PULLING, WorkerImages, open_image_store
from cumulus.app import open_supervisor
from cumulus.config import load_settings
from tests.credentials import security_overrides
from tests.fake_image import fake_image
from tests.fakes.fake_cluster import FakeWorld, fake_node

REGISTRY = "10.213.0.1:50052"
IMAGE = fake_image()


def settings(tmp_path, **overrides):
    base = {"supervisor_id": "unit", "cluster.docker_host": "unix:///fake", "cluster.image": IMAGE.image_id,
            "cluster.poll_interval": 0.1, "journal.path": str(tmp_path / "journal.sqlite3"),
            "server.http_advertise": REGISTRY, **security_overrides()}
    base.update(overrides)
    return load_settings(environ={}, overrides=base)


def nodes(count: int = 2, labelled: tuple[int, ...] = ()):
    made = [fake_node(i + 1) for i in range(count)]
    return [replace(n, address=f"10.213.0.{11 + i}",
                    labels={**n.labels, **({LABEL_WORKER_IMAGE: IMAGE.image_id} if i + 1 in labelled else {})})
            for i, n in enumerate(made)]


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(image_gate, "RETRY_BACKOFF", (0.05,))


async def gate(tmp_path, world: FakeWorld, **overrides) -> WorkerImages:
    world.saved_images[IMAGE.image_id] = IMAGE.saved
    async with world.open_swarm(settings(tmp_path, **overrides)) as swarm:
        return WorkerImages(settings(tmp_path, **overrides), swarm, await open_image_store(settings(tmp_path,
                                                                                                   **overrides)))


async def test_a_node_without_the_image_is_reported_pulling_then_pulled_once_and_labelled(tmp_path):
    async with trio.open_nursery() as nursery:
        world = FakeWorld(nodes(2, labelled=(2,)), nursery)
        images = await gate(tmp_path, world)
        reports: list[str] = []

        async def report(reason: str) -> None:
            reports.append(reason)

        node = world.nodes[0]
        relabelled = await images.ensure(lambda: node, report)
        assert reports == [PULLING]
        export = images.store.exported(IMAGE.image_id)
        assert world.pulls == [(node.id, f"{REGISTRY}/cumulus/worker@{export.manifest_digest}")]
        assert relabelled.labels[LABEL_WORKER_IMAGE] == IMAGE.image_id == world.nodes[0].labels[LABEL_WORKER_IMAGE]
        # a node whose label names the image: nothing to do, nothing reported
        assert await images.ensure(lambda: world.nodes[1], report) is None
        assert await images.ensure(lambda: relabelled, report) is None
        assert len(world.pulls) == 1 and len(reports) == 1
        nursery.cancel_scope.cancel()


async def test_a_failed_pull_is_reported_with_its_reason_and_retried(tmp_path, fast_retries):
    async with trio.open_nursery() as nursery:
        world = FakeWorld(nodes(1), nursery)
        images = await gate(tmp_path, world)
        world.pull_failure = "the pull task rejected: No such image: x"
        reports: list[str] = []

        async def report(reason: str) -> None:
            reports.append(reason)
            if len(reports) == 4:  # pulling, missing, pulling, missing: the registry is fixed
                world.pull_failure = ""

        relabelled = await images.ensure(lambda: world.nodes[0], report)
        assert relabelled is not None and relabelled.labels[LABEL_WORKER_IMAGE] == IMAGE.image_id
        assert reports[::2] == [PULLING] * 3
        missing = reports[1]
        assert missing.startswith("worker image missing: fw1 (10.213.0.11) never asked the registry "
                                  f"{REGISTRY}") and f"/etc/docker/certs.d/{REGISTRY}/ca.crt" in missing
        assert "No such image" in missing
        assert len(world.pulls) == 3
        nursery.cancel_scope.cancel()


async def test_an_image_missing_on_the_manager_is_a_reason_too(tmp_path, fast_retries):
    async with trio.open_nursery() as nursery:
        world = FakeWorld(nodes(1), nursery)
        images = await gate(tmp_path, world)
        del world.saved_images[IMAGE.image_id]
        reports: list[str] = []

        async def report(reason: str) -> None:
            reports.append(reason)

        with trio.move_on_after(0.5):
            await images.ensure(lambda: world.nodes[0], report)
        assert reports[1].startswith("worker image missing: exporting") and "not on the Swarm manager" in reports[1]
        assert world.pulls == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("overrides, why", [
    ({"server.http_advertise": ""}, "server.http_advertise is not set"),
    ({"journal.path": ":memory:"}, "journal is in memory"),
    ({"cluster.image": "registry.example/worker@sha256:" + "a" * 64}, "registry reference"),
])
async def test_the_gate_is_off_without_a_registry_and_says_so_once(tmp_path, caplog, overrides, why):
    caplog.set_level(logging.WARNING, "cumulus.actors.image_gate")
    async with trio.open_nursery() as nursery:
        world = FakeWorld(nodes(1), nursery)
        images = await gate(tmp_path, world, **overrides)
        assert not images.enabled and images.store is None

        async def report(reason: str) -> None:
            raise AssertionError("nothing to report")

        assert await images.ensure(lambda: world.nodes[0], report) is None
        assert world.pulls == [] and not (tmp_path / "images").exists()
        logged = [r.getMessage() for r in caplog.records if "worker image gate off" in r.getMessage()]
        assert len(logged) == 1 and why in logged[0], logged
        nursery.cancel_scope.cancel()


async def workers_of(sup):
    return {w.hostname: w for w in await sup.list_workers()}


async def test_a_supervisor_places_no_job_before_the_image_is_there(tmp_path, fast_retries):
    async with trio.open_nursery() as nursery:
        world = FakeWorld(nodes(2, labelled=(1,)), nursery)
        world.saved_images[IMAGE.image_id] = IMAGE.saved
        world.pull_failure = "the pull task rejected: No such image"
        async with open_supervisor(settings(tmp_path), backends=world.backends(), serve_rpc=False) as sup:
            with trio.fail_after(20):
                while (w := await workers_of(sup)).keys() != {"fw1", "fw2"} or not w["fw1"].healthy \
                        or not w["fw2"].reason.startswith("worker image missing"):
                    await trio.sleep(0.05)
            assert not w["fw2"].healthy and world.pulls and all(node == world.nodes[1].id for node, _ in world.pulls)
            world.pull_failure = ""
            with trio.fail_after(20):
                while not (w := await workers_of(sup))["fw2"].healthy:
                    await trio.sleep(0.05)
            assert world.nodes[1].labels[LABEL_WORKER_IMAGE] == IMAGE.image_id
        nursery.cancel_scope.cancel()


async def test_an_image_upgrade_loses_no_running_job_while_the_workers_pull(tmp_path, monkeypatch):
    """A supervisor restarted with a new image id: its workers pull for longer than the lease TTL, and meanwhile
    they take no new job ("preparing") but renew and re-adopt the running ones, which end as if nothing happened."""
    import sqlite3

    from cumulus.jobs import JobSpec, JobState
    from tests.fakes.fake_cluster import FakeSwarm

    new = fake_image(seed="new")
    pull = FakeSwarm.pull_image

    async def slow_pull(self, node_id: str, reference: str, *, timeout: float) -> None:
        await trio.sleep(5.0)  # > lease.ttl
        await pull(self, node_id, reference, timeout=timeout)

    monkeypatch.setattr(FakeSwarm, "pull_image", slow_pull)
    path, copy = tmp_path / "journal.sqlite3", tmp_path / "after-restart.sqlite3"
    lease = {"lease.ttl": 3.0, "lease.renew_interval": 0.5}
    async with trio.open_nursery() as nursery:
        world = FakeWorld(nodes(2, labelled=(1, 2)), nursery)
        world.lease_ttl = 3.0
        world.saved_images.update({IMAGE.image_id: IMAGE.saved, new.image_id: new.saved})
        async with open_supervisor(settings(tmp_path, **lease), backends=world.backends(), serve_rpc=False) as sup:
            while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                await trio.sleep(0.05)
            assert world.pulls == []
            records = [await sup.submit(JobSpec(package=b"zip", gpu=0.5, duration=600, env={"FAKE_RUNTIME": "8"}))
                       for _ in range(2)]
            for record in records:
                async for event in record.events():
                    if event.state is JobState.RUNNING:
                        break
            await trio.sleep(0.3)  # the journal's writes of RUNNING are flushed
            with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
                source.backup(target)
            world.frozen = True  # a restart that releases nothing: the jobs keep running on their workers
        world.frozen = False
        upgraded = settings(tmp_path, **lease, **{"journal.path": str(copy), "cluster.image": new.image_id})
        async with open_supervisor(upgraded, backends=world.backends(), serve_rpc=False) as sup:
            with trio.fail_after(4):
                while not any(w.state == "preparing" and w.reason == PULLING for w in await sup.list_workers()):
                    await trio.sleep(0.05)
            recovered = [await sup.get(record.job_id) for record in records]
            with trio.fail_after(30):
                for record in recovered:
                    await record.torn_down.wait()
                while not all(w.healthy for w in await sup.list_workers()):
                    await trio.sleep(0.05)
        for record in recovered:
            assert (record.state, record.attempt) == (JobState.COMPLETED, 1), record.reason  # re-adopted
        assert sorted(node for node, _ in world.pulls) == sorted(n.id for n in world.nodes)
        assert {n.labels[LABEL_WORKER_IMAGE] for n in world.nodes} == {new.image_id}
        nursery.cancel_scope.cancel()


def test_a_pull_service_is_pinned_hardened_labelled_and_names_its_image_by_digest():
    from cumulus.resources.image_pull import ROLE_IMAGE_PULL, build_pull_spec, new_pull_service

    reference = f"{REGISTRY}/cumulus/worker@sha256:{'a' * 64}"
    pull = new_pull_service("abcdefghij0123456789abcde", reference, "sup-1")
    spec = build_pull_spec(pull)
    container = spec["task_template"]["ContainerSpec"]
    assert container["Image"] == reference and container["User"] == "65534:65534" and container["ReadOnly"]
    assert container["CapabilityDrop"] == ["ALL"] and container["Command"] == ["true"]
    assert spec["task_template"]["Placement"]["Constraints"] == ["node.id==abcdefghij0123456789abcde"]
    assert spec["task_template"]["RestartPolicy"]["Condition"] == "none"
    assert not spec["task_template"].get("Networks")
    assert spec["labels"]["cumulus.supervisor_id"] == "sup-1" and "cumulus.job_id" not in spec["labels"]
    assert spec["labels"]["cumulus.role"] == ROLE_IMAGE_PULL and len(spec["name"]) <= 63
    assert new_pull_service("abcdefghij0123456789abcde", reference, "sup-1").name != pull.name
    # an image id is for one the node has (the worker image filling a runner volume); a tag never
    assert build_pull_spec(new_pull_service("abcdefghij0123456789abcde", "sha256:" + "a" * 64, "sup-1"))
    for bad in (f"{REGISTRY}/cumulus/worker:latest", "sha" + "a" * 64, f"{REGISTRY}/cumulus/worker@sha256:ab"):
        with pytest.raises(ValueError, match="by digest|REGISTRY"):
            build_pull_spec(new_pull_service("abcdefghij0123456789abcde", bad, "sup-1"))
    with pytest.raises(ValueError, match="node id"):
        build_pull_spec(new_pull_service("Bad node", reference, "sup-1"))
