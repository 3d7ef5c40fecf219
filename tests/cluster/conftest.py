"""Session fixture for the real local cluster (`cumulus local up`). Every test under tests/cluster is marked
`cluster`; run them as root with:  .venv/bin/python -m pytest -m cluster tests/cluster

If no healthy cluster exists the fixture creates one (``CUMULUS_TEST_WORKERS`` workers, default 2) and leaves it up
afterwards, so a developer's cluster survives the test run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if CLUSTER_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> dict:
    """The live cluster description (cumulus.local.cluster.status()), bringing the cluster up if needed."""
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    from cumulus.local import cluster as lc

    try:
        desc = lc.status()
        healthy = desc["ready"]
    except (FileNotFoundError, ValueError, KeyError):
        healthy = False
    if not healthy:
        from tests.credentials import users_client_config

        with users_client_config():
            lc.up(int(os.environ.get("CUMULUS_TEST_WORKERS", "0")) or None)
        desc = lc.status()
    assert desc["ready"], desc
    return desc


@pytest.fixture
def workers(cluster) -> list[dict]:
    return [n for n in cluster["nodes"] if n["role"] == "worker"]


@pytest.fixture(scope="session")
def docker_manager(cluster):
    import docker

    client = docker.DockerClient(base_url=f"unix://{cluster['manager_socket']}", version="auto", timeout=60)
    yield client
    client.close()

