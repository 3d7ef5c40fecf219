"""The JoinTokenRegistry's logic (cumulus/actors/join_tokens.py) on the in-memory Swarm fake and a fake clock: a host
joins with a token once; expired, reused, revoked and forged tokens, another host key, another node, and a bad
worker JSON are refused with a message that says why, and a refusal changes nothing (the token's state, the node's
labels and availability). Tokens never appear in logs or reprs; joins are counted by outcome."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio

from cumulus import metrics
from cumulus.actors.base import run_actor
from cumulus.actors.join_tokens import (CompleteJoin, CreateJoinToken, JoinRefused, JoinTokenRegistry,
                                        JoinUnavailable, ListJoinTokens, RegisterWorker, RevokeJoinToken)
from cumulus.config import Settings
from cumulus.errors import InvalidRequest, NotFound, PermissionDenied, Unauthenticated
from cumulus.join_line import JoinNotConfigured, public_key_pin
from cumulus.join_table import PURGE_AFTER, JoinTokenState
from cumulus.resources.swarm import NodeInfo, SwarmError
from tests.credentials import run_credentials
from tests.fakes.fake_cluster import FakeSwarm, FakeWorld, fake_node

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKxOzsSqnbh1v5Tqp2xhPlgSVzScTcSgr4oFxjb9mmrx"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHz1m3cRp1FFlw4dXyVGkiGUQpGeBNvX3jv7dtAkqZ6O"
SUPERVISOR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGmqGUbHcBm7NiBXbAH3tO7sqBcl3pbdzzDVXNjFovOE cumulus@sup"
NEW_HOST = NodeInfo(id="newnode0001", hostname="gpu-new", state="ready", availability="pause", role="worker",
                    labels={}, address="10.213.0.50")
T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def worker_json(hostname: str = "gpu-new", address: str = "10.213.0.50:22") -> str:
    device = {"index": 0, "name": "NVIDIA H200", "kind": "gpu", "is_gpu": True, "memory_bytes": 141 << 30,
              "uuid": "GPU-0123abcd", "source": "nvidia-smi"}
    return json.dumps({"schema": 1, "hostname": hostname, "ssh_address": address, "ssh_user": "cumulus",
                       "inventory": {"devices": [device], "gpu_count": 1}})


def join_settings(tmp_path, **changes) -> Settings:
    key = tmp_path / "id_ed25519"
    key.write_text("private key: never read here\n")
    (tmp_path / "id_ed25519.pub").write_text(SUPERVISOR_KEY + "\n")
    creds = run_credentials()
    settings = Settings(supervisor_id="sup-join")
    settings.journal.path = ":memory:"
    settings.security.tls_cert, settings.security.tls_key = str(creds.server_cert), str(creds.server_key)
    settings.security.tls_ca = str(creds.ca)
    settings.server.http_advertise = "10.213.0.1:50052"
    settings.cluster.ssh_key, settings.cluster.image = str(key), "sha256:" + "ab" * 32
    for dotted, value in changes.items():
        section, _, name = dotted.partition(".")
        setattr(getattr(settings, section), name, value)
    return settings


class Joining:
    """A running registry over a fake Swarm that holds two workers and the new host's node."""

    def __init__(self, ref, world: FakeWorld, clock: FakeClock, counted: metrics.Metrics) -> None:
        self.ref, self.world, self.clock, self.counted = ref, world, clock, counted

    def node(self, node_id: str = NEW_HOST.id) -> NodeInfo:
        return next(n for n in self.world.nodes if n.id == node_id)

    async def tokens(self) -> dict:
        return {t.id: t for t in await self.ref.call(ListJoinTokens())}

    async def register(self, token: str, key: str = KEY_A, address: str = "10.213.0.50:22", hostname="gpu-new"):
        return await self.ref.call(RegisterWorker(token, hostname, address, key))

    async def complete(self, token: str, node_id: str = NEW_HOST.id, document: str | None = None):
        return await self.ref.call(CompleteJoin(token, node_id, document or worker_json()))

    def joins(self, outcome: str) -> float:
        return self.counted.registry.get_sample_value("cumulus_worker_joins_total", {"outcome": outcome}) or 0.0

    @asynccontextmanager
    async def unchanged(self):
        """The block must change neither a token nor a node."""
        tokens, nodes = await self.tokens(), list(self.world.nodes)
        yield
        assert await self.tokens() == tokens
        assert self.world.nodes == nodes


@pytest.fixture()
async def joining(tmp_path, nursery):
    return await start(tmp_path, nursery)


async def start(tmp_path, nursery, **changes) -> Joining:
    world = FakeWorld([fake_node(1), fake_node(2), NEW_HOST], nursery)
    clock = FakeClock()
    counted = metrics.Metrics()
    with metrics.bound(counted):  # the actor's task (and what it counts) starts inside
        swarm = FakeSwarm(world, "sup-join")
        registry = JoinTokenRegistry(join_settings(tmp_path, **changes), swarm, clock=clock)
        ref = await nursery.start(run_actor, registry)
    return Joining(ref, world, clock, counted)


async def test_a_host_joins_once_and_its_node_is_labelled_pinned_and_active(joining, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    offer = await joining.ref.call(CreateJoinToken(3600, {"rack": "r7"}, "alice"))
    assert offer.token.startswith("cumulus_join_" + offer.info.id + "_") and offer.info.state is JoinTokenState.PENDING
    pin = public_key_pin(str(run_credentials().server_cert))
    assert offer.pin == pin and offer.script_url == "https://10.213.0.1:50052/join/worker.sh"
    assert offer.command == (f"curl -fsSk --proto =https --pinnedpubkey {pin} https://10.213.0.1:50052/join/worker.sh"
                             f" | CUMULUS_JOIN_TOKEN={offer.token} bash -s -- --supervisor 10.213.0.1:50052 --pin {pin}")
    assert offer.info.expires_at == T0 + 3600 and offer.info.created_by == "alice"

    grant = await joining.register(offer.token, KEY_A + " root@gpu-new")
    assert grant.swarm_join_token == "SWMTKN-1-fake" and grant.manager_addresses == ("10.213.0.10:2377",)
    assert grant.supervisor_ssh_public_key == SUPERVISOR_KEY.rsplit(" ", 1)[0] and grant.ssh_user == "cumulus"
    assert grant.worker_image == "sha256:" + "ab" * 32 and grant.registry == "10.213.0.1:50052"
    assert grant.ca_certificate == run_credentials().ca.read_text() and grant.cluster_name == "sup-join"
    assert (await joining.tokens())[offer.info.id].state is JoinTokenState.REGISTERED
    assert await joining.register(offer.token, KEY_A) == grant  # the script run again: same key, same answer

    joining.clock.now += 60
    joined = await joining.complete(offer.token)
    node = joining.node()
    assert node.availability == "active" and node.labels == dict(joined.labels)
    assert node.labels["cumulus.worker"] == "true" and node.labels["cumulus.ssh"] == "10.213.0.50:22"
    assert node.labels["cumulus.host_key"] == KEY_A and node.labels["cumulus.label.rack"] == "r7"
    assert node.labels["cumulus.gpu_count"] == "1" and json.loads(node.labels["cumulus.devices"])[0]["name"] == \
        "NVIDIA H200"
    info = (await joining.tokens())[offer.info.id]
    assert (info.state, info.node_id, info.hostname, info.ended_at) == (JoinTokenState.USED, NEW_HOST.id, "gpu-new",
                                                                        T0 + 60)
    assert (joining.joins("registered"), joining.joins("joined")) == (2, 1)
    secret = offer.token.removeprefix(f"cumulus_join_{offer.info.id}_")  # itself may hold "_" (urlsafe)
    assert secret not in caplog.text and secret not in repr(RegisterWorker(offer.token, "h", "a", KEY_A))
    assert "SWMTKN" not in repr(grant) and secret not in repr(offer)


async def test_a_used_token_is_refused_and_changes_nothing(joining):
    offer = await joining.ref.call(CreateJoinToken())
    await joining.register(offer.token)
    await joining.complete(offer.token)
    async with joining.unchanged():
        with pytest.raises(PermissionDenied, match=rf"join token {offer.info.id} was already used at .* by gpu-new"):
            await joining.register(offer.token)
        with pytest.raises(PermissionDenied, match="already used"):
            await joining.complete(offer.token)
    assert joining.joins("used") == 2


async def test_an_expired_token_is_refused_at_register_and_at_complete(joining):
    offer = await joining.ref.call(CreateJoinToken(600))
    joining.clock.now += 599
    await joining.register(offer.token)
    joining.clock.now += 1  # expiry is checked on every use
    assert (await joining.tokens())[offer.info.id].state is JoinTokenState.EXPIRED
    async with joining.unchanged():
        with pytest.raises(PermissionDenied, match=rf"join token {offer.info.id} expired at 2027-01-15 08:10:00 UTC"):
            await joining.complete(offer.token)
        with pytest.raises(PermissionDenied, match="expired"):
            await joining.register(offer.token)
    assert joining.joins("expired") == 2 and joining.node().labels == {}


async def test_revoked_tokens_are_refused_and_a_used_one_stays_used(joining):
    pending, registered, used = [await joining.ref.call(CreateJoinToken()) for _ in range(3)]
    await joining.register(registered.token)
    await joining.register(used.token)
    await joining.complete(used.token)
    labels = dict(joining.node().labels)
    for offer in (pending, registered, used):
        await joining.ref.call(RevokeJoinToken(offer.info.id))
    states = {i: t.state for i, t in (await joining.tokens()).items()}
    assert states == {pending.info.id: JoinTokenState.REVOKED, registered.info.id: JoinTokenState.REVOKED,
                      used.info.id: JoinTokenState.USED}
    async with joining.unchanged():
        with pytest.raises(PermissionDenied, match=rf"join token {pending.info.id} was revoked at"):
            await joining.register(pending.token)
        with pytest.raises(PermissionDenied, match="revoked"):
            await joining.complete(registered.token)
        await joining.ref.call(RevokeJoinToken(registered.info.id))  # idempotent
    assert joining.node().labels == labels
    with pytest.raises(NotFound, match="no join token 0badc0de"):
        await joining.ref.call(RevokeJoinToken("0badc0de"))
    with pytest.raises(InvalidRequest, match="not a join token id"):
        await joining.ref.call(RevokeJoinToken("cumulus_join_x"))


async def test_forged_and_malformed_tokens_are_unauthenticated(joining):
    offer = await joining.ref.call(CreateJoinToken())
    forged = offer.token[:-4] + ("AAAA" if not offer.token.endswith("AAAA") else "BBBB")  # its id, another secret
    async with joining.unchanged():
        for token in (forged, "cumulus_join_", "cumulus_" + offer.token[13:], offer.token + "x", ""):
            with pytest.raises(Unauthenticated, match="join token is not valid"):
                await joining.register(token)
        with pytest.raises(Unauthenticated):
            await joining.complete(forged)
    assert joining.joins("unauthenticated") == 6


async def test_another_host_key_is_refused_on_register_again(joining):
    offer = await joining.ref.call(CreateJoinToken())
    await joining.register(offer.token, KEY_A)
    async with joining.unchanged():
        with pytest.raises(JoinRefused, match=r"registered at .* by gpu-new \(10.213.0.50:22\) with another SSH host "
                                              r"key than gpu-evil sent now"):
            await joining.register(offer.token, KEY_B, hostname="gpu-evil")
    assert (await joining.tokens())[offer.info.id].host_key == KEY_A
    assert joining.joins("host_key_differs") == 1


async def test_the_node_must_be_the_registered_host(joining):
    offer = await joining.ref.call(CreateJoinToken())
    await joining.register(offer.token, address="10.213.0.51:22")  # the node's address is 10.213.0.50
    async with joining.unchanged():
        with pytest.raises(JoinRefused, match=r"Swarm node newnode0001 \(gpu-new, address 10.213.0.50\) is not the "
                                              r"host that registered"):
            await joining.complete(offer.token)
        with pytest.raises(JoinRefused, match="node fakenode0001 .* is not the host"):
            await joining.complete(offer.token, node_id="fakenode0001")
        with pytest.raises(JoinRefused, match="node nosuchnode is not in the Swarm"):
            await joining.complete(offer.token, node_id="nosuchnode")
        with pytest.raises(InvalidRequest, match="node_id"):
            await joining.complete(offer.token, node_id="../x")
        with pytest.raises(InvalidRequest, match="worker_json.inventory.gpu_count"):
            await joining.complete(offer.token, document=worker_json().replace('"gpu_count": 1', '"gpu_count": 3'))
    assert joining.joins("node_mismatch") == 2 and joining.joins("not_in_swarm") == 1 and joining.joins("invalid") == 2


async def test_a_node_address_given_as_a_name_is_matched_by_hostname(joining):
    offer = await joining.ref.call(CreateJoinToken())
    await joining.register(offer.token, address="gpu-new.example:22", hostname="gpu-other")
    with pytest.raises(JoinRefused, match="is not the host"):
        await joining.complete(offer.token)
    offer = await joining.ref.call(CreateJoinToken())
    await joining.register(offer.token, address="gpu-new.example:22", hostname="gpu-new")
    assert (await joining.complete(offer.token)).labels["cumulus.ssh"] == "gpu-new.example:22"


async def test_complete_before_register_and_an_existing_worker_are_refused(joining):
    offer = await joining.ref.call(CreateJoinToken())
    async with joining.unchanged():
        with pytest.raises(JoinRefused, match="has no registered host: register first"):
            await joining.complete(offer.token)
    joining.world.nodes[0] = replace(joining.world.nodes[0], address="10.213.0.11")  # fw1, a worker set up by hand
    await joining.register(offer.token, address="10.213.0.11:22", hostname="fw1")
    async with joining.unchanged():
        with pytest.raises(JoinRefused, match="already is a Cumulus worker with another host key"):
            await joining.complete(offer.token, node_id="fakenode0001")


async def test_an_unreachable_swarm_changes_nothing(joining, monkeypatch):
    offer = await joining.ref.call(CreateJoinToken())

    async def unreachable(*args, **kwargs):
        raise SwarmError("list nodes: connection refused")

    for method in ("join_info", "list_nodes"):
        monkeypatch.setattr(FakeSwarm, method, unreachable)
    async with joining.unchanged():
        with pytest.raises(JoinUnavailable, match="Swarm manager could not be asked"):
            await joining.register(offer.token)
    monkeypatch.undo()
    await joining.register(offer.token)
    monkeypatch.setattr(FakeSwarm, "list_nodes", unreachable)
    async with joining.unchanged():
        with pytest.raises(JoinUnavailable):
            await joining.complete(offer.token)
    assert joining.joins("unavailable") == 2


async def test_ended_tokens_are_listed_for_seven_days_then_purged(joining):
    expired, used, fresh = [await joining.ref.call(CreateJoinToken(60)) for _ in range(3)]
    await joining.register(used.token)
    await joining.complete(used.token)
    joining.clock.now += PURGE_AFTER + 59
    fresh_again = await joining.ref.call(CreateJoinToken(60))
    assert set(await joining.tokens()) == {expired.info.id, fresh.info.id, fresh_again.info.id}  # used at T0
    joining.clock.now += 2
    assert set(await joining.tokens()) == {fresh_again.info.id}
    joining.clock.now += 60
    assert [t.state for t in await joining.ref.call(ListJoinTokens())] == [JoinTokenState.EXPIRED]  # listed (audit)


async def test_ttls_and_labels_are_checked(joining):
    for ttl in (59, 7 * 86400 + 1):
        with pytest.raises(InvalidRequest, match="ttl"):
            await joining.ref.call(CreateJoinToken(ttl))
    with pytest.raises(InvalidRequest, match="label key"):
        await joining.ref.call(CreateJoinToken(0, {"Bad Key": "x"}))
    assert (await joining.ref.call(CreateJoinToken(0))).info.expires_at == T0 + 3600
    assert await joining.ref.call(ListJoinTokens()) != []


@pytest.mark.parametrize("changes, says", [
    ({"security.insecure": True}, "security.insecure"),
    ({"security.client_ca": "/ca.pem"}, "security.client_ca"),
    ({"server.http_listen": ""}, "server.http_listen is empty"),
    ({"server.http_advertise": ""}, "server.http_advertise is empty"),
    ({"server.http_advertise": "127.0.0.1:50052"}, "another host cannot reach"),
    ({"server.http_advertise": "0.0.0.0:50052"}, "another host cannot reach"),
    ({"server.http_advertise": "[::1]:50052"}, "another host cannot reach"),
    ({"server.http_advertise": "localhost:50052"}, "another host cannot reach"),
    ({"cluster.ssh_key": ""}, "cluster.ssh_key is empty"),
    ({"cluster.ssh_key": "/nonexistent/key"}, "public half of cluster.ssh_key"),
    ({"security.tls_ca": "/nonexistent/ca.pem"}, "security.tls_ca"),
    ({"security.tls_cert": "/nonexistent/cert.pem"}, "security.tls_cert"),
])
async def test_a_supervisor_that_cannot_serve_a_join_makes_no_token(tmp_path, nursery, changes, says):
    joining = await start(tmp_path, nursery, **changes)
    with pytest.raises(JoinNotConfigured, match=says.replace(".", r"\.")):
        await joining.ref.call(CreateJoinToken())
    assert await joining.ref.call(ListJoinTokens()) == []
