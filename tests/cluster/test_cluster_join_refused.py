"""Refused joins on the real local cluster (issue 15, "Done when"): on a host made by ``cumulus local add-node``, the
line of ``cumulus worker join-command`` run as printed is refused with ``join: <message>`` and exit 1 when its token
is forged (a real token's id with another secret), revoked, expired (the smallest ``--ttl``, waited out), or was
registered by a host with another SSH host key; and when the line's pin is not the supervisor's (a man in the
middle). Each time nothing about the cluster changed: the Swarm's node list, labels and availabilities are
identical, the host is in no Swarm and has no worker JSON. (A reused token: test_cluster_join.py, after the join.)
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from join_tools import (add_node, cumulus, forget, host_key_of, host_swarm_state, join_line, join_token,
                        local_client_config, pin_in, refusal, run_on, swarm_snapshot, token_in, with_script_pin,
                        workers)

pytestmark = pytest.mark.cluster

MIN_TTL = "60"  # seconds: the smallest --ttl


@pytest.fixture(scope="module")
def fresh_host(cluster):
    workers_before = sorted(workers())
    node = add_node()
    try:
        yield node
    finally:
        problems = forget(node)
        assert not problems, problems
        assert sorted(workers()) == workers_before


@pytest.fixture
def refused(fresh_host):
    """Runs a line on the fresh host, asserts it was refused and that nothing changed; returns the message."""
    before = swarm_snapshot()

    def run(line: str) -> str:
        message = refusal(run_on(fresh_host, line, timeout=300))
        assert swarm_snapshot() == before, "a refused join changed the Swarm"
        assert host_swarm_state(fresh_host) == "inactive"
        assert not Path(fresh_host["worker_json"]).exists()
        assert fresh_host["name"] not in workers()
        return message

    return run


def register_with(token: str, node: dict, host_key: str) -> tuple[int, dict]:
    """POST /v1/join/register as the host would, over the supervisor's HTTPS port (the local CA trusted)."""
    import yaml

    ca = yaml.safe_load(local_client_config().read_text())["ca"]
    line = join_line()  # for the advertised address
    host, port = line.split("https://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=ca), timeout=30)
    try:
        body = json.dumps({"hostname": node["name"], "sshAddress": f"{node['address']}:22", "hostKey": host_key})
        conn.request("POST", "/v1/join/register", body=body,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def other_host_key(tmp_path: Path) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


def test_a_forged_token_is_refused(refused):
    line = join_line()
    token = token_in(line)
    token_id = token.split("_")[2]
    forged = f"cumulus_join_{token_id}_{secrets.token_urlsafe(32)}"  # a real id, another secret
    message = refused(line.replace(token, forged))
    assert "UNAUTHENTICATED" in message and "not valid" in message, message
    assert forged not in message


def test_a_line_whose_pin_is_not_the_supervisors_is_refused(refused, fresh_host):
    line = join_line()
    pin = pin_in(line)
    other_pin = "sha256//" + base64.b64encode(hashlib.sha256(secrets.token_bytes(32)).digest()).decode()
    # join.sh's own pin (a script that came from elsewhere): it refuses the supervisor before sending anything
    message = refused(with_script_pin(line, other_pin))
    assert "does not have the pinned public key" in message, message
    # the whole line's pin: curl refuses to download the script, so nothing runs (the pipe's bash gets no script
    # and exits 0: the line's exit status is bash's, not curl's; curl says why)
    before = swarm_snapshot()
    res = run_on(fresh_host, line.replace(pin, other_pin), timeout=120)
    assert "public key does not match pinned public key" in res.stderr, res.stderr
    assert "join" not in res.stdout and swarm_snapshot() == before and host_swarm_state(fresh_host) == "inactive"


def test_a_revoked_token_is_refused(refused):
    made = join_token()
    cumulus("worker", "revoke-join-token", made["id"])
    message = refused(made["command"])
    assert "PERMISSION_DENIED" in message and "revoked" in message, message


def test_a_token_registered_with_another_host_key_is_refused(refused, fresh_host, tmp_path):
    line = join_line()
    status, answer = register_with(token_in(line), fresh_host, other_host_key(tmp_path))
    assert status == 200 and answer.get("swarmJoinToken", "").startswith("SWMTKN-"), (status, answer)
    assert host_key_of(fresh_host) not in json.dumps(answer)
    message = refused(line)  # the real host, with its own key, and the same token
    assert "FAILED_PRECONDITION" in message and "host key" in message, message


def test_an_expired_token_is_refused(refused):
    made = join_token("--ttl", MIN_TTL)
    wait = made["expires_at"] - time.time() + 1
    assert 0 < wait <= 61, made
    time.sleep(wait)
    message = refused(made["command"])
    assert "PERMISSION_DENIED" in message and "expired" in message, message
