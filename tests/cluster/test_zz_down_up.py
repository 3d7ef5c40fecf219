"""Runs last in tests/cluster: `down` leaves nothing behind, then `up` restores the cluster for whoever is next."""

from __future__ import annotations

import subprocess
import time

from cumulus.local import cluster as lc
from cumulus.local import state, teardown
from tests.credentials import users_client_config


def _sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout


def test_down_leaves_nothing_then_up_again(cluster):
    workers = sum(1 for n in cluster["nodes"] if n["role"] == "worker")
    teardown.down(quiet=True)
    assert teardown.leftovers() == {}
    assert not [n for n in _sh("ip netns list").split() if n.startswith(state.NETNS_PREFIX)]
    assert state.BRIDGE not in _sh("ip -o link show")
    assert state.VETH_PREFIX not in _sh("ip -o link show")
    assert str(state.STATE_DIR) not in _sh("ps -eo args")
    assert "nsfs" not in _sh("mount") or state.NETNS_PREFIX not in _sh("mount | grep nsfs")
    assert not state.STATE_DIR.exists()
    t0 = time.monotonic()
    with users_client_config():  # `up` writes the user's client config, not the test run's
        lc.up(workers, quiet=True)
    elapsed = time.monotonic() - t0
    st = lc.status()
    assert st["ready"] and len(st["nodes"]) == workers + 1
    print(f"local up (caches warm) took {elapsed:.1f}s")
    # the run's own client config still trusts the run's CA (the tests after this one use it)
    from cumulus.client.connection import load_client_config
    from tests.credentials import run_credentials

    assert load_client_config().ca == str(run_credentials().ca)
