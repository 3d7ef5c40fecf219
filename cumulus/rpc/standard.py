"""The standard gRPC services operators' tools speak: ``grpc.health.v1`` (Kubernetes and Swarm gRPC probes,
grpc_health_probe) kept in step with the supervisor's own health, and server reflection (grpcurl). Both are open
without a token (:data:`cumulus.rpc.auth.OPEN_METHODS`), like the project's own ``HealthCheck``.

Health answers for ``""`` (the server) and for ``cumulus.v1.OrchestratorService``: NOT_SERVING until the supervisor's
tree is up (the journal recovered), whenever it is restarting, and from the moment it starts shutting down;
SERVING otherwise.
"""

from __future__ import annotations

from typing import Any

import grpc
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cumulus.asyncio_bridge import call_asyncio
from cumulus.rpc.generated.v1 import cumulus_pb2, indexes_pb2, workers_pb2

SERVICE_NAME = cumulus_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
WORKER_SERVICE_NAME = workers_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
INDEX_SERVICE_NAME = indexes_pb2.DESCRIPTOR.services_by_name["PackageIndexService"].full_name
HEALTH_POLL_SECONDS = 1.0
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def add_standard_services(server: grpc.aio.Server) -> health_aio.HealthServicer:
    """Add health and reflection to ``server`` (before it starts); returns the health servicer, NOT_SERVING."""
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, WORKER_SERVICE_NAME, INDEX_SERVICE_NAME,
                                         HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    return health


async def keep_health_current(health: health_aio.HealthServicer, api: Any) -> None:
    """Set the health of ``""`` and the Cumulus service from ``api.health()``, checked every
    ``HEALTH_POLL_SECONDS`` (ten times as often while not serving), until cancelled; on the way out (shielded, bounded) every status becomes NOT_SERVING
    and stays so (graceful shutdown)."""
    status = None
    try:
        while True:
            now = SERVING if (await api.health()).serving else NOT_SERVING
            if now != status:
                for name in ("", SERVICE_NAME):
                    await call_asyncio(health.set, name, now)
                status = now
            await trio.sleep(HEALTH_POLL_SECONDS if status == SERVING else HEALTH_POLL_SECONDS / 10)
    finally:
        with trio.move_on_after(2, shield=True):
            await call_asyncio(health.enter_graceful_shutdown)
