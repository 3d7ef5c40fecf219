"""OrchestratorService: each RPC becomes calls on the supervisor's Python API (run in Trio).

Handlers run on the asyncio loop (grpc.aio) and cross into Trio through :func:`cumulus.asyncio_bridge.call_trio`.
Errors raised on purpose become a gRPC status with their message (:mod:`cumulus.rpc.status`); anything else is
logged and becomes INTERNAL. No handler lets an exception take the server down.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import grpc

from cumulus._version import __version__
from cumulus.asyncio_bridge import call_trio
from cumulus.errors import CumulusError
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.status import status_for

log = logging.getLogger(__name__)


def _unary(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: OrchestratorServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except CumulusError as error:
            await context.abort(status_for(error), str(error))
        except Exception as error:  # a bug: report it to the caller as INTERNAL and keep serving
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")

    return wrapper


class OrchestratorServicer(cumulus_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, api: Any) -> None:
        self._api = api

    @_unary
    async def HealthCheck(self, request: pb.HealthCheckRequest, context: Any) -> pb.HealthCheckResponse:
        health = await call_trio(self._api.health)
        return pb.HealthCheckResponse(
            status=pb.HealthCheckResponse.SERVING if health.serving else pb.HealthCheckResponse.NOT_SERVING,
            reason=health.reason,
            version=__version__,
            supervisor_id=health.supervisor_id,
            workers_ready=health.workers_ready,
            jobs_active=health.jobs_active,
        )
