"""Private package index credentials (issue 17, item 5), without Docker: each user's username and password for an
allowed index (``jobs.package_indexes``), stored like tokens - sealed in the journal's database, owned by the
calling token's user, listed without the secret, deleted - over the real PackageIndexService (gRPC, TLS, tokens)
of the real supervisor on the in-memory fakes, the ``cumulus index`` commands, and what a job with ``index_url``
gets where no trusted install step can run. The installer's side is ``tests/test_index_install_spec.py``, the real
cluster's ``tests/cluster/test_cluster_private_index.py``."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys

import grpc
import pytest
import trio

from cumulus.actors.base import run_actor
from cumulus.errors import InvalidRequest, NotFound, PermissionDenied, Unsatisfiable
from cumulus.index_credentials import (CredentialsFor, DeleteCredentials, IndexCredential, ListCredentials,
                                       StoreCredentials, answer, check_credential)
from cumulus.journal import Journal, open_database
from cumulus.journal_rows import SecretBox
from cumulus.client.connection import ClientConfig, open_channel
from cumulus.jobs import JobState
from cumulus.rpc.generated.v1 import indexes_pb2 as ipb
from cumulus.rpc.generated.v1 import indexes_pb2_grpc
from tests.credentials import run_credentials
from tests.test_job_history import grpc_supervisor
from tests.test_job_lifecycle import fake_cluster, spec as fake_spec

INDEX = "https://pypi.example.com/simple/"
OTHER = "http://10.20.30.40:8080/simple/"
PASSWORD = "pa55-Word-7e1d \"quoted\" \\ #hash"
USERNAME = "deploy-user-41c2"


# ---- the store on its own ------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    path = tmp_path / "journal.sqlite3"
    db, box = open_database(str(path)), SecretBox.from_key_file(tmp_path / "journal.key")
    yield db, box, path
    db.close()


def test_credentials_are_sealed_at_rest_and_open_for_their_owner_only(store):
    db, box, path = store
    info, replaced = answer(db, box, StoreCredentials("alice", INDEX, IndexCredential(USERNAME, PASSWORD)))
    assert (info.owner, info.index_url, replaced) == ("alice", INDEX, False)
    assert answer(db, box, CredentialsFor("alice", INDEX)) == IndexCredential(USERNAME, PASSWORD)
    assert answer(db, box, CredentialsFor("bob", INDEX)) is None  # another user's job gets none
    assert answer(db, box, CredentialsFor("alice", OTHER)) is None
    db.execute("PRAGMA wal_checkpoint(FULL)")
    raw = b"".join(p.read_bytes() for p in path.parent.glob("journal.sqlite3*") if p.suffix != ".lock")
    assert PASSWORD.encode() not in raw and USERNAME.encode() not in raw  # sealed, never clear
    assert b"pa55" not in raw and INDEX.encode() in raw  # the URL is what it is listed by
    shown = repr(IndexCredential(USERNAME, PASSWORD))
    assert PASSWORD not in shown and USERNAME not in shown


def test_listing_replacing_and_deleting(store):
    db, box, _ = store
    answer(db, box, StoreCredentials("alice", INDEX, IndexCredential("a", "1")))
    answer(db, box, StoreCredentials("bob", INDEX, IndexCredential("b", "2")))
    first = answer(db, box, ListCredentials("alice"))
    info, replaced = answer(db, box, StoreCredentials("alice", INDEX.rstrip("/"), IndexCredential("a", "new")))
    assert replaced and info.created_at == first[0].created_at and info.updated_at >= first[0].updated_at
    assert answer(db, box, CredentialsFor("alice", INDEX)).password == "new"
    assert answer(db, box, CredentialsFor("bob", INDEX)).password == "2"  # each user's own
    assert [(i.owner, i.index_url) for i in answer(db, box, ListCredentials(None))] == [("alice", INDEX),
                                                                                         ("bob", INDEX)]
    assert not hasattr(first[0], "password") and not hasattr(first[0], "username")
    assert answer(db, box, DeleteCredentials("alice", INDEX)).owner == "alice"
    assert answer(db, box, CredentialsFor("alice", INDEX)) is None
    assert answer(db, box, CredentialsFor("bob", INDEX)).password == "2"
    with pytest.raises(NotFound, match="cumulus index list"):
        answer(db, box, DeleteCredentials("alice", INDEX))


def test_credentials_sealed_with_another_key_say_to_log_in_again(store, tmp_path):
    db, box, _ = store
    answer(db, box, StoreCredentials("alice", INDEX, IndexCredential(USERNAME, PASSWORD)))
    with pytest.raises(Unsatisfiable, match=r"journal key changed.*cumulus index login"):
        answer(db, SecretBox.ephemeral(), CredentialsFor("alice", INDEX))
    # A sealed value copied into another user's row does not open there.
    sealed = db.execute("SELECT sealed FROM index_credentials WHERE owner = 'alice'").fetchone()[0]
    with db:
        db.execute("INSERT INTO index_credentials VALUES ('mallory', ?, ?, 0, 0)", (INDEX, sealed))
    with pytest.raises(Unsatisfiable):
        answer(db, box, CredentialsFor("mallory", INDEX))


@pytest.mark.parametrize(("username", "password", "says"), [
    ("", "x", "username is empty"), ("u", "", "password is empty"), ("u\nmachine evil", "x", "line break"),
    ("u", "p\n", "line break"), ("u", "x" * 5000, "longer than 4096"),
])
def test_unusable_credentials_are_refused_without_echoing_them(username, password, says):
    with pytest.raises(InvalidRequest, match=says) as refused:
        check_credential(username, password)
    text = str(refused.value)
    assert "machine evil" not in text and "x" * 100 not in text and "p\n" not in text


async def test_the_journal_keeps_them_across_a_restart(tmp_path):
    path, box = str(tmp_path / "j.sqlite3"), SecretBox.from_key_file(tmp_path / "j.key")
    for step in ("store", "read"):
        async with trio.open_nursery() as nursery:
            journal = await nursery.start(run_actor, Journal(path, 3600, box))
            if step == "store":
                await journal.call(StoreCredentials("alice", INDEX, IndexCredential(USERNAME, PASSWORD)))
            else:
                assert await journal.call(CredentialsFor("alice", INDEX)) == IndexCredential(USERNAME, PASSWORD)
            nursery.cancel_scope.cancel()


# ---- over gRPC: the real supervisor on the fakes --------------------------------------------------------------------

@pytest.fixture(scope="module")
def address(tmp_path_factory):
    with grpc_supervisor(tmp_path_factory.mktemp("indexes") / "journal.sqlite3",
                         **{"jobs.package_indexes": [INDEX, OTHER.rstrip("/")]}) as served:
        yield served


def stub_call(address: str, token: str, method: str, request):
    config = ClientConfig(address, token=token, ca=str(run_credentials().ca))
    with open_channel(config) as channel:
        return getattr(indexes_pb2_grpc.PackageIndexServiceStub(channel), method)(request, timeout=10)


def refused(address: str, token: str, method: str, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub_call(address, token, method, request)
    return raised.value


def user_token(address: str, name: str) -> str:
    from cumulus.client.client import CumulusClient

    boss = CumulusClient(config=ClientConfig(address, token=run_credentials().admin_token,
                                             ca=str(run_credentials().ca)), log_to_driver=False)
    return boss.create_token(name)[1]


def test_users_store_list_and_delete_their_own_credentials_over_grpc(address, caplog):
    carol, dave = user_token(address, "carol"), user_token(address, "dave")
    store = ipb.StoreIndexCredentialsRequest(index_url=INDEX, username=USERNAME, password=PASSWORD)
    with caplog.at_level(logging.DEBUG):
        reply = stub_call(address, carol, "StoreIndexCredentials", store)
    assert (reply.info.owner, reply.info.index_url, reply.replaced) == ("carol", INDEX, False)
    assert PASSWORD not in caplog.text and USERNAME not in caplog.text
    assert "index credentials of 'carol'" in caplog.text
    assert stub_call(address, carol, "StoreIndexCredentials", store).replaced
    listed = stub_call(address, carol, "ListIndexCredentials", ipb.ListIndexCredentialsRequest())
    assert [(c.owner, c.index_url) for c in listed.credentials] == [("carol", INDEX)]
    assert list(listed.allowed_indexes) == [INDEX, OTHER]
    assert PASSWORD.encode() not in listed.SerializeToString() and USERNAME.encode() not in listed.SerializeToString()
    # dave sees none of carol's, cannot delete them, and may not list everyone's.
    assert not stub_call(address, dave, "ListIndexCredentials", ipb.ListIndexCredentialsRequest()).credentials
    gone = refused(address, dave, "DeleteIndexCredentials", ipb.DeleteIndexCredentialsRequest(index_url=INDEX))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    everyone = refused(address, dave, "ListIndexCredentials", ipb.ListIndexCredentialsRequest(all_users=True))
    assert everyone.code() == grpc.StatusCode.PERMISSION_DENIED
    every = stub_call(address, run_credentials().admin_token, "ListIndexCredentials",
                      ipb.ListIndexCredentialsRequest(all_users=True))
    assert ("carol", INDEX) in [(c.owner, c.index_url) for c in every.credentials]
    deleted = stub_call(address, carol, "DeleteIndexCredentials", ipb.DeleteIndexCredentialsRequest(index_url=INDEX))
    assert deleted.info.owner == "carol"
    assert not stub_call(address, carol, "ListIndexCredentials", ipb.ListIndexCredentialsRequest()).credentials


def test_refusals_say_what_to_do_and_never_echo_the_password(address):
    erin = user_token(address, "erin")
    not_allowed = refused(address, erin, "StoreIndexCredentials", ipb.StoreIndexCredentialsRequest(
        index_url="https://elsewhere.example.org/simple/", username="u", password=PASSWORD))
    assert not_allowed.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "jobs.package_indexes" in not_allowed.details() and INDEX in not_allowed.details()
    with_creds = refused(address, erin, "StoreIndexCredentials", ipb.StoreIndexCredentialsRequest(
        index_url=f"https://u:{PASSWORD[:8]}@pypi.example.com/simple/", username="u", password=PASSWORD))
    assert with_creds.code() == grpc.StatusCode.INVALID_ARGUMENT and "cumulus index login" in with_creds.details()
    assert PASSWORD[:8] not in with_creds.details()
    bad = refused(address, erin, "StoreIndexCredentials", ipb.StoreIndexCredentialsRequest(
        index_url=INDEX, username="u", password=PASSWORD + "\n"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and PASSWORD not in bad.details()
    anonymous = refused(address, "", "ListIndexCredentials", ipb.ListIndexCredentialsRequest())
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_index_commands_of_the_cli(address):
    token = user_token(address, "frida")

    def cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
        env = {**__import__("os").environ, "CUMULUS_TOKEN": token}
        return subprocess.run([sys.executable, "-m", "cumulus", "index", *argv, "--address", address],
                              input=stdin, capture_output=True, text=True, timeout=60, env=env)

    login = cli("login", OTHER, "--username", USERNAME, "--password-stdin", stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    assert f"credentials for {OTHER} stored" in login.stdout and PASSWORD not in login.stdout + login.stderr
    listed = cli("list")
    assert listed.returncode == 0 and INDEX in listed.stdout and OTHER in listed.stdout, listed
    as_json = json.loads(cli("list", "-o", "json").stdout)
    assert [c["index_url"] for c in as_json["credentials"]] == [OTHER] and as_json["credentials"][0]["owner"] == "frida"
    assert PASSWORD not in json.dumps(as_json) and USERNAME not in json.dumps(as_json)
    no_tty = cli("login", OTHER, "--username", USERNAME)  # no terminal to prompt on, no --password-stdin
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    refused_url = cli("login", "https://elsewhere.example.org/simple/", "-u", "x", "--password-stdin", stdin="pw")
    assert refused_url.returncode == 1 and "jobs.package_indexes" in refused_url.stderr
    assert cli("logout", OTHER).returncode == 0
    again = cli("logout", OTHER)
    assert again.returncode == 1 and "no credentials stored" in again.stderr


# ---- a job with index_url where no trusted install step runs --------------------------------------------------------

async def test_a_job_with_a_private_index_never_falls_back_to_the_runners_own_pip():
    async with fake_cluster() as (sup, _world):
        record = await sup.submit(fake_spec(requirements=("privatepkg==1",), index_url=INDEX))
        with trio.fail_after(30):
            await record.torn_down.wait()
        assert record.state is JobState.FAILED, (record.state, record.reason)
        assert "needs the supervisor's install step" in record.reason and INDEX in record.reason
        plain = await sup.submit(fake_spec(requirements=("privatepkg==1",)))  # no index: the runner's fallback
        with trio.fail_after(30):
            await plain.torn_down.wait()
        assert "install step" not in plain.reason


async def test_the_api_refuses_an_index_the_cluster_does_not_allow():
    async with fake_cluster(**{"jobs.package_indexes": [INDEX]}) as (sup, _world):
        with pytest.raises(Unsatisfiable, match="jobs.package_indexes"):
            await sup.store_index_credentials(OTHER, "u", "p")
        info, _ = await sup.store_index_credentials(INDEX.rstrip("/"), "u", "p")
        assert info.index_url == INDEX and info.owner == ""  # the local admin of an in-process API
        with pytest.raises(PermissionDenied):
            from cumulus.identity import Caller
            await sup.list_index_credentials(all_users=True, caller=Caller("gus"))
        assert [i.index_url for i in await sup.list_index_credentials()] == [INDEX]
        assert (await sup.delete_index_credentials(INDEX)).index_url == INDEX


def test_a_journal_made_before_gets_the_table_on_open(tmp_path):
    path = tmp_path / "old.sqlite3"
    sqlite3.connect(path).close()  # an existing file without the table
    db = open_database(str(path))
    columns = {row["name"] for row in db.execute("PRAGMA table_info(index_credentials)")}
    db.close()
    assert columns == {"owner", "index_url", "sealed", "created_at", "updated_at"}
