"""The standard gRPC services, over real gRPC with TLS against the real supervisor (in-memory fakes): a
``grpc.health.v1`` client (what grpc_health_probe and Kubernetes/Swarm probes send) gets SERVING without a token,
and a reflection client (what grpcurl does) lists the Cumulus service."""

from __future__ import annotations

import itertools

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cumulus.client.connection import ClientConfig, open_channel
from tests.credentials import run_credentials
from tests.test_job_history import grpc_supervisor

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_standard_health_and_reflection_answer_without_a_token(tmp_path):
    with grpc_supervisor(tmp_path / "journal.sqlite3") as address:
        anonymous = ClientConfig(address, ca=str(run_credentials().ca))  # TLS, no token
        with open_channel(anonymous) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "cumulus.v1.OrchestratorService"):
                watch = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
                statuses = [reply.status for reply in itertools.takewhile(lambda r: r.status != SERVING, watch)]
                assert set(statuses) <= {health_pb2.HealthCheckResponse.NOT_SERVING}, service  # then SERVING
                watch.cancel()
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == SERVING, service
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=10)
            names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"cumulus.v1.OrchestratorService", "grpc.health.v1.Health"} <= names
