"""Token rotation (``cumulus token rotate NAME``, the RotateToken RPC): a new secret for the same name, so the user
keeps their jobs and limits while a leaked secret is refused from the next call on; over real gRPC against the real
supervisor (in-memory fakes), plus the token registry on its own for what a restart keeps."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import grpc
import pytest

from cumulus.client.client import CumulusClient
from cumulus.client.connection import ClientConfig, open_channel
from cumulus.errors import NotFound, PermissionDenied, RequestRejected, Unauthenticated
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from tests.credentials import run_credentials
from tests.test_job_history import grpc_supervisor, work


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    with grpc_supervisor(tmp_path_factory.mktemp("rotation") / "journal.sqlite3") as served:
        yield served


def config(address: str, token: str = "") -> ClientConfig:
    return ClientConfig(address, token=token, ca=str(run_credentials().ca))


def client(address: str, token: str) -> CumulusClient:
    return CumulusClient(config=config(address, token), log_to_driver=False)


def admin(address: str) -> CumulusClient:
    return client(address, run_credentials().admin_token)


def rotate_raw(address: str, token: str, name: str) -> grpc.RpcError:
    """The status of a RotateToken call that must fail (straight over gRPC: the code as the wire has it)."""
    with open_channel(config(address, token)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            cumulus_pb2_grpc.OrchestratorServiceStub(channel).RotateToken(pb.RotateTokenRequest(name=name),
                                                                          timeout=10)
    return raised.value


def test_rotation_refuses_the_old_secret_and_keeps_the_name_its_jobs_and_limits(address):
    boss = admin(address)
    made, old = boss.create_token("frank", max_running=2, max_queued=5, max_gpu=1.5, rate=50)
    frank_before = client(address, old)
    job_id = frank_before.submit(work, 1, env={"FAKE_RUNTIME": "30"}).job_id

    info, new = boss.rotate_token("frank")
    assert new.startswith("cumulus_") and new != old
    assert info == made  # same name, admin flag, limits and creation time; not revoked

    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        frank_before.list_jobs()
    with open_channel(config(address, old)) as channel:  # on the wire: UNAUTHENTICATED, like a revoked token
        with pytest.raises(grpc.RpcError) as refused:
            cumulus_pb2_grpc.OrchestratorServiceStub(channel).ListJobs(pb.ListJobsRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and old not in refused.value.details()

    frank = client(address, new)
    assert [j.job_id for j in frank.list_jobs()] == [job_id]  # the job submitted with the old secret is still his
    assert frank.status(job_id).job_id == job_id
    listed = {t.name: t for t in boss.list_tokens()}["frank"]
    assert (listed.max_running, listed.max_queued, listed.max_gpu, listed.rate, listed.revoked) == (2, 5, 1.5, 50,
                                                                                                   False)
    frank.cancel(job_id)  # he may still act on it


def test_a_rotated_token_keeps_its_admin_flag(address):
    boss = admin(address)
    boss.create_token("ops", admin=True)
    info, secret = boss.rotate_token("ops")
    assert info.admin
    assert "ops" in {t.name for t in client(address, secret).list_tokens()}  # token administration: admins only


def test_rotating_an_unknown_or_a_revoked_token_says_what_to_do(address):
    token = run_credentials().admin_token
    unknown = rotate_raw(address, token, "nobody")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "cumulus token create" in unknown.details()
    with pytest.raises(NotFound):
        admin(address).rotate_token("nobody")

    admin(address).create_token("gone")
    admin(address).revoke_token("gone")
    revoked = rotate_raw(address, token, "gone")
    assert revoked.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "revoked" in revoked.details() and "cumulus token create" in revoked.details()
    assert {t.name: t for t in admin(address).list_tokens()}["gone"].revoked  # a refused rotation changed nothing


def test_only_admins_may_rotate(address):
    _, secret = admin(address).create_token("grace")
    with pytest.raises(PermissionDenied, match="not an admin token"):
        client(address, secret).rotate_token("grace")  # not even her own
    assert rotate_raw(address, secret, "admin").code() == grpc.StatusCode.PERMISSION_DENIED
    without = rotate_raw(address, "", "grace")
    assert without.code() == grpc.StatusCode.UNAUTHENTICATED and "cumulus token create" in without.details()
    assert client(address, secret).list_jobs() == []  # the refused calls left her token as it was


def test_the_admin_token_of_the_admin_token_file_is_rotated_by_changing_the_file(address):
    token = run_credentials().admin_token
    refused = rotate_raw(address, token, "admin")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "security.admin_token_file" in refused.details() and "restart" in refused.details()
    assert token not in refused.details()
    assert admin(address).list_tokens()  # the file's token still works


def test_no_secret_is_ever_logged(address, caplog):
    _, old = admin(address).create_token("heidi")
    with caplog.at_level(logging.DEBUG):
        _, new = admin(address).rotate_token("heidi")
        with pytest.raises(Unauthenticated):
            client(address, old).list_jobs()
        client(address, new).list_jobs()
    assert "'heidi' rotated" in caplog.text  # the rotation is logged ...
    assert old not in caplog.text and new not in caplog.text  # ... never a secret


def test_the_rotate_command_of_the_cli(address):
    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cumulus", *argv, "--address", address], capture_output=True,
                              text=True, timeout=60)

    _, old = admin(address).create_token("ivan", max_queued=3)
    rotated = cli("token", "rotate", "ivan")
    assert rotated.returncode == 0, rotated.stderr
    secret = rotated.stdout.strip()
    assert secret.startswith("cumulus_") and secret != old
    assert "'ivan' rotated" in rotated.stderr and "shown only this once" in rotated.stderr
    assert client(address, secret).list_jobs() == []

    as_json = cli("token", "rotate", "ivan", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    assert (printed["name"], printed["max_queued"], printed["revoked"]) == ("ivan", 3, False)
    assert printed["token"].startswith("cumulus_") and printed["token"] != secret  # like `token create -o json`
    with pytest.raises(Unauthenticated):
        client(address, secret).list_jobs()
    assert client(address, printed["token"]).list_jobs() == []
    assert secret not in cli("token", "list", "-o", "json").stdout  # the listing never shows a secret

    unknown = cli("token", "rotate", "nobody")
    assert unknown.returncode == 1 and "cumulus token create" in unknown.stderr


# ---- what a restart keeps (the registry on its own) ----------------------------------------------------------------


def start_registry(tmp_path, admin_token_file: str = ""):  # what the actor's start does, without the actor
    from cumulus.actors.tokens import Credentials, TokenRegistry
    from cumulus.journal import open_database

    registry = TokenRegistry(str(tmp_path / "journal.sqlite3"), Credentials(), admin_token_file)
    registry.db = open_database(registry.path)
    if admin_token_file:
        registry._bootstrap_admin(registry._read_admin_token())
    registry.credentials._replace(registry._callers())
    return registry


def test_a_rotation_lasts_across_a_restart_and_the_admin_token_file_stays_authoritative(tmp_path):
    from cumulus.identity import Limits, new_token_secret

    token_file = tmp_path / "admin.token"
    from_file = new_token_secret()
    token_file.write_text(from_file)
    registry = start_registry(tmp_path, str(token_file))
    _, old = registry._create("judy", False, Limits(max_running=1))
    info, new = registry._rotate("judy")
    registry.credentials._replace(registry._callers())
    with pytest.raises(RequestRejected, match="admin_token_file"):
        registry._rotate("admin")
    registry.db.close()

    restarted = start_registry(tmp_path, str(token_file))
    assert restarted.credentials.caller_for(old) is None
    assert restarted.credentials.caller_for(new) == info.caller  # same name and limits, after the restart too
    assert restarted.credentials.caller_for(from_file).admin  # the file's admin token is untouched
    restarted.db.close()


def test_without_an_admin_token_file_a_token_named_admin_is_rotated_like_any_other(tmp_path):
    from cumulus.identity import Limits

    registry = start_registry(tmp_path)
    _, old = registry._create("admin", True, Limits())
    _, new = registry._rotate("admin")
    registry.db.close()
    restarted = start_registry(tmp_path)
    assert restarted.credentials.caller_for(old) is None and restarted.credentials.caller_for(new).admin
    restarted.db.close()
