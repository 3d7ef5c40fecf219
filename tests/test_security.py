"""The front door is closed by default: TLS, a bearer token on every job RPC, token administration for admins
only, revocation at once, mutual TLS on request; over real gRPC against the real supervisor (in-memory fakes)."""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import time

import grpc
import pytest

from cumulus.client.client import CumulusClient
from cumulus.client.connection import ClientConfig, load_client_config, open_channel
from cumulus.config import SecuritySettings
from cumulus.local.credentials import issue_client_certificate
from cumulus.errors import ConfigError, NotFound, PermissionDenied, Unauthenticated
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.server import is_loopback, server_credentials
from tests.credentials import run_credentials
from tests.test_job_history import grpc_supervisor, work

JOB_RPCS = {
    "SubmitJob": pb.JobSubmission(), "WatchJob": pb.WatchJobRequest(job_id="j"),
    "GetJobStatus": pb.GetJobStatusRequest(job_id="j"), "DescribeJob": pb.DescribeJobRequest(job_id="j"),
    "CancelJob": pb.CancelJobRequest(job_id="j"), "ListWorkers": pb.ListWorkersRequest(),
    "ListJobs": pb.ListJobsRequest(), "CreateToken": pb.CreateTokenRequest(token=pb.Token(name="x")),
    "ListTokens": pb.ListTokensRequest(), "RevokeToken": pb.RevokeTokenRequest(name="x"),
    "RotateToken": pb.RotateTokenRequest(name="x"),
}
STREAMING = {"SubmitJob", "WatchJob"}


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    with grpc_supervisor(tmp_path_factory.mktemp("security") / "journal.sqlite3") as served:
        yield served


def config(address: str, token: str = "", **kwargs) -> ClientConfig:
    return ClientConfig(address, token=token, ca=str(run_credentials().ca), **kwargs)


def call(address_or_config, method: str, request=None, *, timeout: float = 10):
    cfg = address_or_config if isinstance(address_or_config, ClientConfig) else config(address_or_config)
    with open_channel(cfg) as channel:
        stub = getattr(cumulus_pb2_grpc.OrchestratorServiceStub(channel), method)
        request = JOB_RPCS.get(method) if request is None else request
        if method in STREAMING:
            return list(stub(request, timeout=timeout))
        return stub(request, timeout=timeout)


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        fn()
    return raised.value.code()


def test_a_plaintext_channel_cannot_talk_to_the_supervisor(address):
    plain = ClientConfig(address, insecure=True)
    assert code_of(lambda: call(plain, "HealthCheck", pb.HealthCheckRequest(), timeout=5)) == \
        grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_ca_is_told_what_to_fix(address):
    with CumulusClient(config=ClientConfig(address, token=run_credentials().admin_token)) as client:
        with pytest.raises(Exception, match="TLS with the supervisor .* failed.*`ca`"):
            client.list_jobs()


@pytest.mark.parametrize("method", sorted(JOB_RPCS))
def test_every_job_and_token_rpc_without_a_token_is_unauthenticated(address, method):
    with pytest.raises(grpc.RpcError) as raised:
        call(address, method)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "cumulus token create" in raised.value.details()


@pytest.mark.parametrize("method", ["GetJobStatus", "ListJobs", "ListWorkers"])
def test_an_unknown_or_malformed_token_is_unauthenticated(address, method):
    for token in ("cumulus_" + "x" * 43, "not-a-token"):
        with pytest.raises(grpc.RpcError) as raised:
            call(config(address, token), method)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert token not in raised.value.details()


def test_the_health_check_is_open_but_tells_strangers_nothing_about_the_cluster(address):
    anonymous = call(address, "HealthCheck", pb.HealthCheckRequest())
    assert anonymous.status == pb.HealthCheckResponse.SERVING and anonymous.version
    assert (anonymous.supervisor_id, anonymous.workers_ready) == ("", 0)
    known = call(config(address, run_credentials().admin_token), "HealthCheck", pb.HealthCheckRequest())
    assert (known.supervisor_id, known.workers_ready) == ("unit", 2)


def test_tokens_are_made_by_admins_shown_once_and_revoked_at_once(address, caplog):
    admin = CumulusClient(config=config(address, run_credentials().admin_token), log_to_driver=False)
    info, secret = admin.create_token("alice", max_running=2, rate=5)
    assert secret.startswith("cumulus_") and (info.name, info.admin, info.max_running, info.rate) == (
        "alice", False, 2, 5)
    alice = CumulusClient(config=config(address, secret), log_to_driver=False)
    assert alice.list_jobs() == []
    with pytest.raises(PermissionDenied, match="not an admin token"):
        alice.create_token("mallory", admin=True)
    with pytest.raises(PermissionDenied):
        alice.list_tokens()
    listed = {t.name: t for t in admin.list_tokens()}
    assert {"admin", "alice"} <= set(listed) and listed["admin"].admin and not listed["alice"].revoked
    assert secret not in repr(admin.list_tokens())
    with pytest.raises(Exception, match="exists already"):
        admin.create_token("alice")

    assert admin.revoke_token("alice").revoked
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        alice.list_jobs()
    with pytest.raises(NotFound):
        admin.revoke_token("nobody")
    assert secret not in caplog.text


def test_one_user_cannot_see_watch_or_cancel_another_users_job(address):
    admin = CumulusClient(config=config(address, run_credentials().admin_token), log_to_driver=False)
    clients = {}
    for name in ("bob", "carol"):
        _, secret = admin.create_token(name)
        clients[name] = CumulusClient(config=config(address, secret), log_to_driver=False)
    ref = clients["bob"].submit(work, 1, env={"FAKE_RUNTIME": "30"})
    carol = clients["carol"]
    unknown = "unit-000000000000"
    for action in (lambda j: carol.status(j), lambda j: carol.describe(j), lambda j: carol.cancel(j),
                   lambda j: list(carol.watch(j, idle_timeout=5))):
        with pytest.raises(NotFound) as theirs:
            action(ref.job_id)
        with pytest.raises(NotFound) as nobodys:
            action(unknown)
        assert str(theirs.value).replace(ref.job_id, "ID") == str(nobodys.value).replace(unknown, "ID")
    assert [j.job_id for j in carol.list_jobs()] == []
    assert [j.job_id for j in clients["bob"].list_jobs()] == [ref.job_id]
    assert ref.job_id in [j.job_id for j in admin.list_jobs()]
    assert [w.ssh_address for w in carol.list_workers()] == ["", ""]  # how to reach workers is for admins
    assert all(w.ssh_address for w in admin.list_workers())
    admin.cancel(ref.job_id)


def test_the_token_commands_of_the_cli(address):
    env_config = config(address, run_credentials().admin_token)

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cumulus", *argv, "--address", address], capture_output=True,
                              text=True, timeout=60)

    assert env_config.token  # the run's client config (CUMULUS_CONFIG) holds this admin token
    made = cli("token", "create", "dave", "--max-queued", "3", "--max-gpu", "1.5")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("cumulus_") and "shown only this once" in made.stderr
    listed = cli("token", "list", "-o", "json")
    assert '"name": "dave"' in listed.stdout and secret not in listed.stdout and '"max_queued": 3' in listed.stdout
    assert cli("token", "revoke", "dave").returncode == 0
    assert '"revoked": true' in cli("token", "list", "-o", "json").stdout.split('"name": "dave"')[1]
    assert cli("token", "create", "bad name").returncode == 1
    assert cli("token", "create", "x", "--max-running", "-1").returncode == 2


def test_mutual_tls_refuses_a_client_without_a_certificate_of_the_ca(tmp_path):
    from tests.test_job_history import grpc_supervisor as serve

    creds = run_credentials()
    client_cert, client_key = issue_client_certificate(creds, "client", tmp_path)
    with serve(tmp_path / "journal.sqlite3", **{"security.client_ca": str(creds.ca)}) as address:
        token = creds.admin_token
        without = config(address, token)
        assert code_of(lambda: call(without, "ListJobs")) == grpc.StatusCode.UNAVAILABLE
        with_cert = config(address, token, client_cert=str(client_cert), client_key=str(client_key))
        assert list(call(with_cert, "ListJobs").jobs) == []


def test_without_a_certificate_the_server_refuses_to_start_unless_insecure():
    with pytest.raises(ConfigError, match="--insecure"):
        server_credentials(SecuritySettings())
    assert server_credentials(SecuritySettings(insecure=True)) is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.213.0.1") and not is_loopback("example.org")


def test_the_client_config_file_and_its_overrides(tmp_path):
    from cumulus.client.connection import write_client_config

    path = tmp_path / "c" / "config.yaml"
    write_client_config(path, {"address": "127.0.0.1:7", "token": "cumulus_file", "ca": "/ca.pem"})
    assert path.stat().st_mode & 0o777 == 0o600
    env = {"CUMULUS_CONFIG": str(path)}
    loaded = load_client_config(environ=env)
    assert (loaded.address, loaded.token, loaded.ca, loaded.insecure) == ("127.0.0.1:7", "cumulus_file", "/ca.pem",
                                                                        False)
    assert "cumulus_file" not in repr(loaded)
    loaded = load_client_config(environ={**env, "CUMULUS_ADDRESS": "127.0.0.1:8", "CUMULUS_TOKEN": "cumulus_env"})
    assert (loaded.address, loaded.token) == ("127.0.0.1:8", "cumulus_env")
    assert load_client_config("127.0.0.1:9", environ=env).address == "127.0.0.1:9"
    path.write_text("adress: x\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_client_config(environ=env)


def test_local_credentials_are_private_and_kept(tmp_path):
    from cryptography import x509

    from cumulus.local.credentials import ensure_credentials

    creds, note = ensure_credentials(tmp_path)
    assert note.startswith("made")
    for private in (creds.server_key, creds.admin_token_file, creds.ca.parent / "ca-key.pem"):
        assert private.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=300)
    token = creds.admin_token
    assert ensure_credentials(tmp_path) == (creds, "kept") and creds.admin_token == token


class NotServingApi:
    """A fake supervisor API that is never ready (the server only asks it for its health)."""

    async def health(self):
        from cumulus.app import Health

        return Health(False, "starting")


def test_insecure_mode_is_logged_loudly(caplog):
    import trio

    from cumulus.rpc.server import serve_grpc

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_grpc(
                NotServingApi(), "127.0.0.1:0", security=SecuritySettings(insecure=True), task_status=task_status))
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING):
        trio.run(main)
    assert "INSECURE" in caplog.text and "anyone who can reach" in caplog.text


def test_a_submission_over_the_rate_limit_says_when_to_retry_also_in_metadata(address):
    from cumulus.errors import QuotaExceeded

    admin = CumulusClient(config=config(address, run_credentials().admin_token), log_to_driver=False)
    _, secret = admin.create_token("erin", rate=0.01)  # a burst of 1, then one every 100 s
    erin = CumulusClient(config=config(address, secret), log_to_driver=False)
    first = erin.submit(work, 1, env={"FAKE_RUNTIME": "0.1"})
    with pytest.raises(QuotaExceeded) as refused:
        erin.submit(work, 2, env={"FAKE_RUNTIME": "0.1"})
    assert "rate" in str(refused.value) and 90 < refused.value.retry_after <= 100
    assert first.job_id


def test_calls_beyond_max_concurrent_rpcs_are_refused_not_queued(tmp_path):
    import threading

    with grpc_supervisor(tmp_path / "journal.sqlite3", **{"grpc.max_concurrent_rpcs": 1}) as address:
        admin = config(address, run_credentials().admin_token)
        with open_channel(admin) as channel:
            stub = cumulus_pb2_grpc.OrchestratorServiceStub(channel)
            with CumulusClient(config=admin, log_to_driver=False) as submitter:  # its stream ends with it
                job_id = submitter.submit(work, 1, env={"FAKE_RUNTIME": "30"}).job_id
            first = threading.Event()

            def watch() -> None:
                nonlocal watching
                while not first.is_set():  # the submitter's stream may hold the slot a moment longer
                    watching = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=60)
                    try:
                        next(watching)
                        first.set()
                    except grpc.RpcError:
                        time.sleep(0.1)

            watching = None
            threading.Thread(target=watch, daemon=True).start()
            assert first.wait(20)  # the watch holds the one slot
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListJobs(pb.ListJobsRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "grpc.max_concurrent_rpcs" in refused.value.details()
            health = stub.HealthCheck(pb.HealthCheckRequest(), timeout=10)  # health keeps room of its own
            assert health.status == pb.HealthCheckResponse.SERVING
            watching.cancel()


def test_a_call_without_a_token_is_refused_before_its_request_is_read(address):
    """A caller without a token cannot hold a server slot by never sending its request's body."""
    import threading

    never = threading.Event()

    def no_body():
        never.wait(30)  # the request message never comes
        yield pb.ListJobsRequest()

    with open_channel(config(address)) as channel:
        as_stream = channel.stream_unary("/cumulus.v1.OrchestratorService/ListJobs",
                                         request_serializer=pb.ListJobsRequest.SerializeToString,
                                         response_deserializer=pb.ListJobsResponse.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            as_stream(no_body(), timeout=5)
    never.set()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # not DEADLINE_EXCEEDED: it did not wait


def test_a_revoked_admin_token_does_not_come_back_with_a_restart(tmp_path):
    from cumulus.actors.tokens import Credentials, TokenRegistry
    from cumulus.identity import new_token_secret
    from cumulus.journal import open_database

    token_file = tmp_path / "admin.token"
    leaked = new_token_secret()
    token_file.write_text(leaked)

    def start() -> TokenRegistry:  # what the actor's start does, without the actor
        registry = TokenRegistry(str(tmp_path / "journal.sqlite3"), Credentials(), str(token_file))
        registry.db = open_database(registry.path)
        registry._bootstrap_admin(registry._read_admin_token())
        registry.credentials._replace(registry._callers())
        return registry

    registry = start()
    assert registry.credentials.caller_for(leaked).admin
    registry._revoke("admin")
    registry.credentials._replace(registry._callers())
    assert registry.credentials.caller_for(leaked) is None
    assert start().credentials.caller_for(leaked) is None  # restarted with the same file: still revoked
    fresh = new_token_secret()
    token_file.write_text(fresh)
    restarted = start()
    assert restarted.credentials.caller_for(fresh).admin and restarted.credentials.caller_for(leaked) is None


def test_a_client_config_written_for_another_user_follows_no_link_and_is_theirs(tmp_path):
    import os

    from cumulus.client.connection import write_client_config

    home = tmp_path / "home"
    home.mkdir()
    me = (os.getuid(), os.getgid())
    path = home / ".config" / "cumulus" / "config.yaml"
    write_client_config(path, {"address": "127.0.0.1:1"}, owner=me)
    assert [(p.stat().st_mode & 0o777, p.stat().st_uid) for p in (home / ".config", path.parent, path)] == [
        (0o700, me[0]), (0o700, me[0]), (0o600, me[0])]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / ".config" / "other").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not followed"):
        write_client_config(home / ".config" / "other" / "config.yaml", {"address": "x:1"}, owner=me)
    assert list(elsewhere.iterdir()) == []
    path.unlink()
    path.symlink_to(elsewhere / "target")  # a link named like the file is replaced, not written through
    write_client_config(path, {"address": "127.0.0.1:2"}, owner=me)
    assert not path.is_symlink() and not (elsewhere / "target").exists()
