"""Host key pinning of joined workers, against a real OpenSSH sshd on loopback: a node that carries the
``cumulus.host_key`` label (set when it joined) is reached only if its sshd presents exactly that key, whatever the
known_hosts file says; another key is refused with a message naming the pin. A node without the label (set up by
hand) is still checked against the known_hosts file."""

from __future__ import annotations

import pytest

from cumulus.asyncio_bridge import open_asyncio_bridge
from cumulus.backends import connect_ssh_node
from cumulus.config import Settings
from cumulus.resources.ssh import SshError
from cumulus.resources.swarm import NodeInfo
from tests.loopback_sshd import running_sshd
from tests.test_join_tokens import KEY_B


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with running_sshd(tmp_path_factory.mktemp("sshd-pin")) as server:
        yield server


def node(sshd, **labels: str) -> NodeInfo:
    return NodeInfo(id="pinned0001", hostname="pinned", state="ready", availability="active", role="worker",
                    labels={"cumulus.worker": "true", "cumulus.ssh": f"{sshd.host}:{sshd.port}",
                            "cumulus.ssh_user": sshd.user, **labels}, address=sshd.host)


def host_key(sshd) -> str:
    return " ".join((sshd.root.parent / "host_key.pub").read_text().split()[:2])


def settings(sshd, known_hosts: str = "") -> Settings:
    conf = Settings()
    conf.cluster.ssh_key, conf.cluster.known_hosts, conf.cluster.ssh_connect_timeout = sshd.key_path, known_hosts, 10
    return conf


async def test_a_joined_node_is_reached_with_exactly_its_pinned_key(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")  # nothing known: only the pin can let it in
    async with open_asyncio_bridge():
        async with connect_ssh_node(node(sshd, **{"cumulus.host_key": host_key(sshd)}), settings(sshd, str(empty))) \
                as backend:
            assert (await backend.conn.run("echo pinned")).stdout == "pinned\n"


async def test_another_key_than_the_pinned_one_is_refused_even_if_known_hosts_trusts_it(sshd):
    async with open_asyncio_bridge():
        with pytest.raises(SshError, match=f"host key of {sshd.host} differs from the one pinned when it joined "
                                           r"\(ssh-ed25519\); if the host was reinstalled, remove"):
            async with connect_ssh_node(node(sshd, **{"cumulus.host_key": KEY_B}),
                                        settings(sshd, sshd.known_hosts_path)):
                pass


async def test_a_node_set_up_by_hand_is_still_checked_against_known_hosts(sshd, tmp_path):
    async with open_asyncio_bridge():
        async with connect_ssh_node(node(sshd), settings(sshd, sshd.known_hosts_path)) as backend:
            assert await backend.is_alive()
        wrong = tmp_path / "known_hosts"
        wrong.write_text(f"[{sshd.host}]:{sshd.port} {KEY_B}\n")
        with pytest.raises(SshError, match="HostKeyNotVerifiable"):
            async with connect_ssh_node(node(sshd), settings(sshd, str(wrong))):
                pass
