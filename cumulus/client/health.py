"""``cumulus health``: ask a supervisor whether it serves (plain blocking gRPC; works from any program)."""

from __future__ import annotations

import grpc

from cumulus.client.connection import ClientConfig, load_client_config, open_channel
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc


def check_health(address: str | None = None, *, timeout: float = 5.0,
                 config: ClientConfig | None = None) -> tuple[bool, str]:
    """Return ``(serving, text)``: ``(True, "SERVING")`` or ``(False, <reason>)``. Never raises for RPC errors.
    Connects as the client config says (``config``, else :func:`load_client_config`)."""
    config = config or load_client_config(address)
    address = config.address
    with open_channel(config) as channel:
        stub = cumulus_pb2_grpc.OrchestratorServiceStub(channel)
        try:
            reply = stub.HealthCheck(pb.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False, f"no supervisor reachable at {address} ({code.name.lower()})"
            return False, f"{address}: {code.name}: {error.details()}"
    if reply.status == pb.HealthCheckResponse.SERVING:
        return True, "SERVING"
    name = pb.HealthCheckResponse.Status.Name(reply.status)
    return False, f"{name}: {reply.reason}" if reply.reason else name
