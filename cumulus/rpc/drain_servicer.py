"""WorkerService's drain half: DrainWorker, ActivateWorker, RemoveWorker (admin).

Each RPC needs an admin token (PERMISSION_DENIED otherwise) and becomes one call on the supervisor's Python API
(:meth:`~cumulus.app.SupervisorApi.drain_worker`, ``activate_worker``, ``remove_worker``); errors become statuses
as in :mod:`cumulus.rpc.servicer` (an unknown worker NOT_FOUND, an ambiguous name INVALID_ARGUMENT, a manager or a
node that is not a Cumulus worker FAILED_PRECONDITION, each message listing what to do).
"""

from __future__ import annotations

import functools
from typing import Any

from cumulus.asyncio_bridge import call_trio
from cumulus.errors import InvalidRequest, PermissionDenied, Unauthenticated
from cumulus.rpc.auth import NO_TOKEN, current_caller
from cumulus.rpc.generated.v1 import workers_pb2 as wpb
from cumulus.rpc.servicer import _unary

MAX_NAME_LEN = 256


def _admin() -> None:
    caller = current_caller()
    if caller is None:
        raise Unauthenticated(NO_TOKEN)
    if not caller.admin:
        raise PermissionDenied(f"token {caller.name!r} is not an admin token; draining, activating and removing "
                               "workers needs one")


def _name(value: str) -> str:
    if len(value) > MAX_NAME_LEN or any(not c.isprintable() for c in value):
        raise InvalidRequest(f"worker name {value[:40]!r} is not a hostname or node id (see `cumulus workers`)")
    return value


class DrainMethods:
    """Mixed into :class:`~cumulus.rpc.workers_servicer.WorkerServicer` (which sets ``self._api``)."""

    _api: Any

    @_unary
    async def DrainWorker(self, request: wpb.DrainWorkerRequest, context: Any) -> wpb.DrainWorkerResponse:
        _admin()
        status = await call_trio(functools.partial(self._api.drain_worker, _name(request.name),
                                                    request.timeout_seconds))
        return wpb.DrainWorkerResponse(node_id=status.node_id, hostname=status.hostname,
                                       availability=status.availability.value, running_jobs=status.running_jobs)

    @_unary
    async def ActivateWorker(self, request: wpb.ActivateWorkerRequest, context: Any) -> wpb.ActivateWorkerResponse:
        _admin()
        status = await call_trio(functools.partial(self._api.activate_worker, _name(request.name)))
        return wpb.ActivateWorkerResponse(node_id=status.node_id, hostname=status.hostname,
                                          availability=status.availability.value)

    @_unary
    async def RemoveWorker(self, request: wpb.RemoveWorkerRequest, context: Any) -> wpb.RemoveWorkerResponse:
        _admin()
        status = await call_trio(functools.partial(self._api.remove_worker, _name(request.name),
                                                   request.timeout_seconds))
        return wpb.RemoveWorkerResponse(node_id=status.node_id, hostname=status.hostname,
                                        cancelled_jobs=status.cancelled_jobs)
