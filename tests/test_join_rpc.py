"""Joining over the wire: the real supervisor (over the in-memory Swarm fake) serving real gRPC and its real HTTP
port with TLS on loopback. The join line's own curl fetches /join/worker.sh and the worker files with the pin it
carries (a wrong pin is refused by curl); a host registers and completes over HTTP (protobuf JSON) and over gRPC,
with its join token as the bearer; admins make, list and revoke tokens with the CLI; errors come back as the
protocol says (docs: /work/notes/join_protocol.md, docs/operations.md "Join a worker")."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import shlex
import shutil
import ssl
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
import trio

from cumulus.app import open_supervisor
from cumulus.cli import main
from cumulus.client.connection import ClientConfig, load_client_config, open_channel
from cumulus.join_line import public_key_pin
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.generated.v1 import workers_pb2 as wpb
from cumulus.rpc.generated.v1 import workers_pb2_grpc
from cumulus.rpc.http_join import WORKER_FILES, files_archive
from tests.credentials import run_credentials
from tests.fakes.fake_api import free_port
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings
from tests.test_join_tokens import KEY_A, KEY_B, NEW_HOST, SUPERVISOR_KEY, worker_json
from tests.trio_thread import serving_in_thread

ROOT = Path(__file__).resolve().parents[1]
ADVERTISED_NAME = "supervisor.cumulus.test"  # resolved to 127.0.0.1 by curl's own --resolve (see fetch)
CURL = shutil.which("curl")


@dataclasses.dataclass(frozen=True)
class Served:
    address: str
    http_port: int
    world: FakeWorld
    files: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    files = tmp_path_factory.mktemp("worker-files")
    for name in WORKER_FILES:
        shutil.copy2(ROOT / "worker_image" / name, files / name)
    (files / "join.sh").write_text("#!/bin/bash\n# the join script, as the supervisor serves it\nexit 0\n")
    key = files / "supervisor_key"
    key.write_text("unused\n")
    (files / "supervisor_key.pub").write_text(SUPERVISOR_KEY + "\n")
    address, http_port = f"127.0.0.1:{free_port()}", free_port()
    conf = settings(**{"grpc.listen": address, "server.http_listen": f"127.0.0.1:{http_port}",
                       "server.http_advertise": f"{ADVERTISED_NAME}:{http_port}", "cluster.worker_files": str(files),
                       "cluster.ssh_key": str(key), "security.tls_ca": str(run_credentials().ca)})

    async def serve(ready: Callable[[Any], None]) -> None:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(1), NEW_HOST], nursery)
            backends = dataclasses.replace(world.backends(), needs_asyncio=True)  # the gRPC server needs it
            async with open_supervisor(conf, backends=backends):
                ready(Served(address, http_port, world, files))
                await trio.sleep_forever()

    with serving_in_thread(serve, name="join-supervisor", start_timeout=60) as running:
        yield running


@pytest.fixture()
def workers(served) -> Iterator[Any]:
    with open_channel(load_client_config(served.address)) as channel:
        yield workers_pb2_grpc.WorkerServiceStub(channel)


def new_token(workers, **labels: str) -> wpb.CreateJoinTokenResponse:
    return workers.CreateJoinToken(wpb.CreateJoinTokenRequest(ttl_seconds=600, labels=labels), timeout=10)


def fetch(served: Served, command: str, tmp_path: Path, pin: str | None = None) -> subprocess.CompletedProcess:
    """Run the curl half of the join line as printed (its name resolved to loopback by a curlrc, ``pin``
    replacing the line's own when given); stdout: what it fetched."""
    fetch_part = command.split(" | ", 1)[0]
    argv = shlex.split(fetch_part)
    if pin is not None:
        argv[argv.index("--pinnedpubkey") + 1] = pin
    (tmp_path / ".curlrc").write_text(f'resolve = "{ADVERTISED_NAME}:{served.http_port}:127.0.0.1"\n')
    return subprocess.run(argv, capture_output=True, timeout=30,
                          env={"CURL_HOME": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})


def post(served: Served, path: str, body: bytes, token: str | None, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(f"https://127.0.0.1:{served.http_port}{path}", data=body, method=method,
                                     headers={"content-type": "application/json",
                                              **({"authorization": f"Bearer {token}"} if token else {})})
    context = ssl.create_default_context(cafile=str(run_credentials().ca))
    try:
        with urllib.request.urlopen(request, context=context, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def register_body(key: str = KEY_A) -> bytes:
    return json.dumps({"hostname": "gpu-new", "sshAddress": "10.213.0.50:22", "hostKey": key}).encode()


def as_joining_host(served: Served, token: str) -> Any:
    """A WorkerService stub that sends ``token`` (a join token) as its bearer, as a joining host would."""
    config = ClientConfig(address=served.address, token=token, ca=str(run_credentials().ca))
    return contextlib.closing(open_channel(config))


@pytest.mark.skipif(CURL is None, reason="no curl")
def test_the_lines_curl_fetches_the_script_and_files_with_the_pin_and_a_wrong_pin_is_refused(served, workers,
                                                                                               tmp_path):
    reply = new_token(workers)
    pin = public_key_pin(str(run_credentials().server_cert))
    assert reply.tls_public_key_pin == pin
    assert reply.script_url == f"https://{ADVERTISED_NAME}:{served.http_port}/join/worker.sh"
    assert reply.command.startswith(f"curl -fsSk --proto =https --pinnedpubkey {pin} {reply.script_url} | "
                                    f"CUMULUS_JOIN_TOKEN={reply.token} bash -s -- --supervisor ")
    fetched = fetch(served, reply.command, tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == (served.files / "join.sh").read_bytes()

    other_key = "sha256//" + "A" * 43 + "="  # what a man in the middle's certificate would give
    refused = fetch(served, reply.command, tmp_path, pin=other_key)
    assert refused.returncode == 90 and refused.stdout == b"", refused.stderr  # CURLE_SSL_PINNEDPUBKEYNOTMATCH

    files = fetch(served, reply.command.replace("/join/worker.sh", "/join/worker-files.tar.gz"), tmp_path)
    assert files.returncode == 0, files.stderr
    with tarfile.open(fileobj=io.BytesIO(files.stdout), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == sorted(WORKER_FILES)
        for name in WORKER_FILES:
            assert tar.extractfile(name).read() == (ROOT / "worker_image" / name).read_bytes()
        assert tar.getmember("setup-worker.sh").mode & 0o111  # still executable


def test_the_worker_files_of_the_repository_are_what_the_archive_holds():
    with tarfile.open(fileobj=io.BytesIO(files_archive(str(ROOT / "worker_image"))), mode="r:gz") as tar:
        assert {m.name: (m.uid, m.uname) for m in tar.getmembers()} == {n: (0, "root") for n in WORKER_FILES}


def test_a_host_registers_and_completes_over_http_and_a_used_token_is_refused(served, workers):
    reply = new_token(workers, rack="r9")
    status, error = post(served, "/v1/join/register", register_body(), None)
    assert (status, error["code"]) == (401, "UNAUTHENTICATED") and "needs a join token" in error["message"]
    status, answer = post(served, "/v1/join/register", register_body(), reply.token)
    assert status == 200, answer
    assert answer["swarmJoinToken"] == "SWMTKN-1-fake" and answer["managerAddresses"] == ["10.213.0.10:2377"]
    assert answer["supervisorSshPublicKey"] == SUPERVISOR_KEY.rsplit(" ", 1)[0] and answer["sshUser"] == "cumulus"
    assert answer["registry"] == f"{ADVERTISED_NAME}:{served.http_port}" and answer["workerImage"] == "sha256:fake"
    assert answer["caCertificate"] == run_credentials().ca.read_text() and answer["clusterName"]

    assert post(served, "/v1/join/register", register_body(KEY_B), reply.token)[0] == 409  # another host key
    status, error = post(served, "/v1/join/complete", json.dumps({"nodeId": NEW_HOST.id, "workerJson": "{"}).encode(),
                         reply.token)
    assert (status, error["code"]) == (400, "INVALID_ARGUMENT") and "worker_json is not JSON" in error["message"]
    assert post(served, "/v1/join/complete", b"not json", reply.token)[1]["code"] == "INVALID_ARGUMENT"
    assert post(served, "/v1/join/complete", json.dumps({"nodeID": "x"}).encode(), reply.token)[0] == 400
    complete = json.dumps({"nodeId": NEW_HOST.id, "workerJson": worker_json()}).encode()
    status, joined = post(served, "/v1/join/complete", complete, reply.token)
    assert status == 200, joined
    assert joined["nodeId"] == NEW_HOST.id and joined["labels"]["cumulus.label.rack"] == "r9"
    node = next(n for n in served.world.nodes if n.id == NEW_HOST.id)
    assert node.labels["cumulus.host_key"] == KEY_A and node.availability == "active"

    status, error = post(served, "/v1/join/complete", complete, reply.token)
    assert status == 403 and error["code"] == "PERMISSION_DENIED" and "already used" in error["message"]
    assert post(served, "/v1/join/register", b"{}", reply.token + "x")[0] == 401  # forged
    assert post(served, "/v1/join/register", b"", reply.token, method="PUT")[0] == 405
    assert announced_too_big(served, reply.token) == 413


def announced_too_big(served: Served, token: str) -> int:
    """The status of a register whose Content-Length is over the limit: answered before any of the body is read."""
    context = ssl.create_default_context(cafile=str(run_credentials().ca))
    connection = http.client.HTTPSConnection("127.0.0.1", served.http_port, context=context, timeout=20)
    try:
        connection.putrequest("POST", "/v1/join/register")
        connection.putheader("authorization", f"Bearer {token}")
        connection.putheader("content-length", str(3 << 20))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_host_registers_over_grpc_with_its_join_token_as_bearer(served, workers):
    reply = new_token(workers)
    with as_joining_host(served, reply.token) as channel:
        host = workers_pb2_grpc.WorkerServiceStub(channel)
        grant = host.RegisterWorker(wpb.RegisterWorkerRequest(hostname="gpu-new", ssh_address="10.213.0.50:22",
                                                              host_key=KEY_A), timeout=10)
        assert grant.swarm_join_token == "SWMTKN-1-fake"
        with pytest.raises(grpc.RpcError) as refused:  # the node is already a worker, with KEY_A pinned ...
            host.CompleteJoin(wpb.CompleteJoinRequest(node_id="fakenode0001", worker_json=worker_json()), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as refused:  # ... and a join token is no API token
            cumulus_pb2_grpc.OrchestratorServiceStub(channel).ListJobs(pb.ListJobsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:  # the admin's API token is no join token
        workers.RegisterWorker(wpb.RegisterWorkerRequest(hostname="h", ssh_address="10.0.0.1:22", host_key=KEY_A),
                               timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "join token" in refused.value.details()
    with as_joining_host(served, reply.token[:-2] + "zz") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            workers_pb2_grpc.WorkerServiceStub(channel).CompleteJoin(wpb.CompleteJoinRequest(node_id="x"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_rpcs_need_an_admin_token(served, workers):
    with open_channel(load_client_config(served.address)) as channel:
        secret = cumulus_pb2_grpc.OrchestratorServiceStub(channel).CreateToken(
            pb.CreateTokenRequest(token=pb.Token(name=f"joiner-{free_port()}")), timeout=10).secret
    config = ClientConfig(address=served.address, token=secret, ca=str(run_credentials().ca))
    with open_channel(config) as channel:
        stub = workers_pb2_grpc.WorkerServiceStub(channel)
        for call, request in ((stub.CreateJoinToken, wpb.CreateJoinTokenRequest()),
                              (stub.ListJoinTokens, wpb.ListJoinTokensRequest()),
                              (stub.RevokeJoinToken, wpb.RevokeJoinTokenRequest(id="0badc0de"))):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "admin" in refused.value.details()


def test_the_cli_makes_lists_and_revokes_join_tokens(served, capsys):
    assert main(["worker", "join-command", "--address", served.address, "--ttl", "30m",
                 "--labels", "rack=r1,gpu=h200"]) == 0
    out, err = capsys.readouterr()
    line = out.strip()
    assert out.count("\n") == 1 and line.startswith("curl -fsSk ") and "CUMULUS_JOIN_TOKEN=cumulus_join_" in line
    token_id = line.split("CUMULUS_JOIN_TOKEN=cumulus_join_", 1)[1][:8]
    assert f"join token {token_id}" in err and f"cumulus worker revoke-join-token {token_id}" in err
    assert "(in 30m00s)" in err

    assert main(["worker", "join-tokens", "--address", served.address]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["ID", "STATE", "CREATED", "EXPIRES", "HOST", "NODE", "LABELS"]
    assert any(row.startswith(token_id) and "pending" in row and "gpu=h200,rack=r1" in row
               for row in table.splitlines())

    assert main(["worker", "revoke-join-token", token_id, "--address", served.address]) == 0
    assert capsys.readouterr().out == f"join token {token_id} revoked\n"
    assert main(["worker", "join-tokens", "-o", "json", "--address", served.address]) == 0
    listed = {t["id"]: t for t in json.loads(capsys.readouterr().out)}
    assert listed[token_id]["state"] == "revoked" and listed[token_id]["labels"] == {"rack": "r1", "gpu": "h200"}

    assert main(["worker", "join-command", "-o", "json", "--address", served.address]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["token"] in made["command"] and made["state"] == "pending" and made["tls_public_key_pin"]

    assert main(["worker", "revoke-join-token", "nope", "--address", served.address]) == 1
    assert "not a join token id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["worker", "join-command", "--ttl", "8d", "--address", served.address])
    assert "1m..7d" in capsys.readouterr().err
