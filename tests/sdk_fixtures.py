"""Fixtures of the SDK test modules: one real gRPC server on the in-memory fakes per module
(``tests.fakes.fake_api.running_fake_server``), and ``CUMULUS_ADDRESS`` pointing every test at it. A module takes
them with ``from tests.sdk_fixtures import address, server  # noqa: F401``."""

from __future__ import annotations

import pytest

from tests.fakes.fake_api import running_fake_server


@pytest.fixture(scope="module")
def server():
    with running_fake_server() as srv:
        yield srv


@pytest.fixture(autouse=True)
def address(server, monkeypatch):
    """The module's server, as ``CUMULUS_ADDRESS``; the SDK's own log lines are shown (not quieted)."""
    monkeypatch.setenv("CUMULUS_ADDRESS", server.address)
    monkeypatch.delenv("CUMULUS_QUIET_LOGS", raising=False)
    return server.address
