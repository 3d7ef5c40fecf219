"""Python versions (issue 17): the supervisor's worker images by Python minor (``cluster.images``), the check at
submit (a client of a version the cluster has no image for is refused with FAILED_PRECONDITION naming the versions
it has), the job keeps its version through the journal and runs on its version's image, and the image gate brings
every image to every worker. The real images are tests/cluster/test_cluster_python_versions.py."""

from __future__ import annotations

import trio
import pytest

from cumulus.actors.image_gate import LABEL_WORKER_IMAGE, WorkerImages, open_image_store
from cumulus.client import packaging
from cumulus.config import ClusterSettings, Settings, load_settings
from cumulus.errors import ConfigError, Unsatisfiable
from cumulus.jobs import JobRecord
from cumulus.journal_rows import record_of, row_of
from cumulus.resources.image_store import ImageStore
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.status import status_for
from cumulus.rpc.submission import spec_from_submission
from tests.credentials import security_overrides
from tests.fake_image import fake_image
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_image_registry import export, source_of

PY311, PY313 = "sha256:" + "1" * 64, "sha256:" + "3" * 64


def add(a: int, b: int) -> int:
    return a + b


def submission(python: str, monkeypatch: pytest.MonkeyPatch) -> pb.JobSubmission:
    monkeypatch.setattr(packaging, "python_version", lambda: python)
    return pb.JobSubmission(code_package=packaging.build_package(add, (1, 2)), gpu=0.5)


def cluster_settings(**cluster: object) -> Settings:
    settings = Settings()
    for key, value in cluster.items():
        setattr(settings.cluster, key, value)
    settings.cluster.validate()
    return settings


# ---- the setting ------------------------------------------------------------------------------------------------

def test_images_come_from_yaml_and_the_environment_and_serve_their_versions(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f'cluster:\n  images:\n    "3.11": "{PY311}"\n    "3.13": "{PY313}"\n')
    settings = load_settings(str(config), environ={})
    assert settings.cluster.worker_images() == {"3.11": PY311, "3.13": PY313}
    assert settings.cluster.image_for("3.13") == PY313 and settings.cluster.image_for("3.11") == PY311
    assert settings.cluster.default_image() == PY313  # the newest, when cluster.image is not set
    from_env = load_settings(environ={"CUMULUS_CLUSTER_IMAGES": f"3.11={PY311},3.13={PY313}"})
    assert from_env.cluster.images == {"3.11": PY311, "3.13": PY313}


def test_an_image_alone_serves_python_3_11_and_stays_the_default():
    cluster = ClusterSettings(image=PY311)
    assert cluster.worker_images() == {"3.11": PY311}
    assert cluster.image_for("") == PY311  # a job journaled before versions were kept
    both = ClusterSettings(image=PY311, images={"3.11": PY311, "3.13": PY313})
    assert both.default_image() == PY311 and both.image_for("3.13") == PY313


@pytest.mark.parametrize("images, says", [
    ({"3.13": "cumulus-worker:py3.13"}, "is a tag"),
    ({"python3.13": PY313}, "not a Python minor version"),
    ({"3": PY313}, "not a Python minor version"),
])
def test_bad_images_name_the_key_and_what_to_write(images, says):
    with pytest.raises(ConfigError, match=says):
        ClusterSettings(images=images).validate()


def test_an_unquoted_yaml_version_is_refused_rather_than_read_as_a_number(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f'cluster:\n  images:\n    3.10: "{PY311}"\n')
    with pytest.raises(ConfigError, match="quote every key"):
        load_settings(str(config), environ={})


# ---- at submit --------------------------------------------------------------------------------------------------

def test_a_client_of_a_served_version_gets_that_version(monkeypatch):
    settings = cluster_settings(images={"3.11": PY311, "3.13": PY313})
    assert spec_from_submission(submission("3.13.1", monkeypatch), settings).python == "3.13"
    assert spec_from_submission(submission("3.11.2", monkeypatch), settings).python == "3.11"


def test_a_client_of_another_version_is_refused_with_failed_precondition_naming_the_versions(monkeypatch):
    settings = cluster_settings(images={"3.11": PY311, "3.13": PY313})
    with pytest.raises(Unsatisfiable) as refused:
        spec_from_submission(submission("3.12.4", monkeypatch), settings)
    message = str(refused.value)
    assert "Python 3.12.4" in message and "3.11, 3.13" in message and "cluster.images" in message
    assert status_for(refused.value).name == "FAILED_PRECONDITION"


def test_an_image_given_alone_refuses_every_other_version(monkeypatch):
    settings = cluster_settings(image=PY311)
    with pytest.raises(Unsatisfiable, match="runs jobs on Python 3.11 only"):
        spec_from_submission(submission("3.13.0", monkeypatch), settings)


def test_the_version_survives_the_journal(monkeypatch):
    spec = spec_from_submission(submission("3.13.0", monkeypatch), cluster_settings(images={"3.13": PY313}))
    back = record_of(row_of(JobRecord("job-1", spec), with_package=True))
    assert back.spec.python == "3.13"


# ---- the image gate and the store --------------------------------------------------------------------------------

def test_the_store_keeps_every_image_served_and_drops_the_others(tmp_path):
    py311, py313, old = fake_image(seed="311"), fake_image(seed="313"), fake_image(seed="old")
    store = ImageStore(tmp_path / "images")
    export(store, old)

    async def both() -> None:
        for image in (py311, py313):
            await store.export(image.image_id, source_of(image), keep=(py311.image_id, py313.image_id))

    trio.run(both)
    assert store.exported(py311.image_id) and store.exported(py313.image_id) and not store.exported(old.image_id)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        i.image_id.split(":")[1] for i in (py311, py313))


async def test_the_gate_pulls_every_image_and_labels_the_node_with_all_of_them(tmp_path):
    py311, py313 = fake_image(seed="311"), fake_image(seed="313")
    overrides = {"supervisor_id": "unit", "cluster.docker_host": "unix:///fake", "cluster.poll_interval": 0.1,
                 "cluster.images": f"3.11={py311.image_id},3.13={py313.image_id}",
                 "journal.path": str(tmp_path / "journal.sqlite3"), "server.http_advertise": "10.213.0.1:50052",
                 **security_overrides()}
    settings = load_settings(environ={}, overrides=overrides)
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1)], nursery)
        world.saved_images.update({py311.image_id: py311.saved, py313.image_id: py313.saved})
        async with world.open_swarm(settings) as swarm:
            gate = WorkerImages(settings, swarm, await open_image_store(settings))

            async def report(reason: str) -> None:
                pass

            node = world.nodes[0]
            relabelled = await gate.ensure(lambda: node, report)
        assert len(world.pulls) == 2
        assert relabelled.labels[LABEL_WORKER_IMAGE] == ",".join(sorted([py311.image_id, py313.image_id]))
        assert not gate.needed(relabelled)
        nursery.cancel_scope.cancel()


# ---- what users see ---------------------------------------------------------------------------------------------

def test_health_and_describe_say_which_pythons_the_cluster_and_the_job_have(monkeypatch):
    from cumulus.client.cli_output import health_text
    from cumulus.client.types import JobInfo
    from cumulus.rpc.convert import status_to_pb

    text = health_text({"status": "SERVING", "version": "0.1.0", "supervisor_id": "ab12", "workers_ready": 2,
                        "jobs_active": 0, "python_versions": ["3.11", "3.13"]})
    assert text.endswith("0 jobs active, Python 3.11, 3.13)"), text
    spec = spec_from_submission(submission("3.13.2", monkeypatch), cluster_settings(images={"3.13": PY313}))
    info = JobInfo.from_pb(status_to_pb(JobRecord("job-1", spec)))
    assert info.python == "3.13" and info.image == ""
