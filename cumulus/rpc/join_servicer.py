"""WorkerService's join half: join tokens (admin) and the joining host's RegisterWorker / CompleteJoin.

The token RPCs need an admin token. RegisterWorker and CompleteJoin are open methods for the API-token check
(:data:`cumulus.rpc.auth.OPEN_METHODS`): the joining host has no API token, it proves itself with its join token as
the bearer, which :func:`bearer_token` reads and the
:class:`~cumulus.actors.join_tokens.JoinTokenRegistry` checks. :func:`register_worker` and :func:`complete_join`
(Trio) are the one implementation of both steps: the gRPC methods here and the HTTP endpoints of
:mod:`cumulus.rpc.http_join` (``POST /v1/join/register``, ``/v1/join/complete``) call them alike, and both report
errors with :func:`join_status`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import grpc

from cumulus.actors.join_tokens import JoinUnavailable
from cumulus.asyncio_bridge import call_trio
from cumulus.errors import CumulusError, InvalidRequest, PermissionDenied, SupervisorUnavailable, Unauthenticated
from cumulus.join_table import JOIN_TOKEN_PREFIX, JoinTokenInfo, JoinTokenState
from cumulus.rpc.auth import current_caller
from cumulus.rpc.convert import timestamp
from cumulus.rpc.generated.v1 import workers_pb2 as wpb
from cumulus.rpc.status import status_for

log = logging.getLogger(__name__)

NO_JOIN_TOKEN = ("this call needs a join token: send 'authorization: Bearer cumulus_join_...' (the line that "
                 "`cumulus worker join-command` printed holds one)")
STATES = {JoinTokenState.PENDING: wpb.JOIN_TOKEN_PENDING, JoinTokenState.REGISTERED: wpb.JOIN_TOKEN_REGISTERED,
          JoinTokenState.USED: wpb.JOIN_TOKEN_USED, JoinTokenState.EXPIRED: wpb.JOIN_TOKEN_EXPIRED,
          JoinTokenState.REVOKED: wpb.JOIN_TOKEN_REVOKED}


def join_status(error: BaseException) -> grpc.StatusCode:
    """The gRPC code of a join error: as :func:`~cumulus.rpc.status.status_for`, and UNAVAILABLE when the Swarm
    manager or the supervisor's tree could not answer (try again)."""
    if isinstance(error, (JoinUnavailable, SupervisorUnavailable)):
        return grpc.StatusCode.UNAVAILABLE
    return status_for(error)


def bearer_token(authorization: str | None) -> str:
    """The join token of an ``authorization`` value (``Bearer cumulus_join_...``); Unauthenticated otherwise."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip().startswith(JOIN_TOKEN_PREFIX):
        raise Unauthenticated(NO_JOIN_TOKEN)
    return token.strip()


def token_info_to_pb(info: JoinTokenInfo) -> wpb.JoinTokenInfo:
    return wpb.JoinTokenInfo(id=info.id, state=STATES[info.state], created_at=timestamp(info.created_at),
                             expires_at=timestamp(info.expires_at), created_by=info.created_by,
                             labels=dict(info.labels), hostname=info.hostname, ssh_address=info.ssh_address,
                             node_id=info.node_id)


async def register_worker(api: Any, token: str, request: wpb.RegisterWorkerRequest) -> wpb.RegisterWorkerResponse:
    """Step 1 of a join (Trio): the host says who it is; the answer is what it needs to join the Swarm."""
    grant = await api.register_worker(token, request.hostname, request.ssh_address, request.host_key)
    return wpb.RegisterWorkerResponse(
        swarm_join_token=grant.swarm_join_token, manager_addresses=list(grant.manager_addresses),
        supervisor_ssh_public_key=grant.supervisor_ssh_public_key, ssh_user=grant.ssh_user,
        worker_image=grant.worker_image, registry=grant.registry, ca_certificate=grant.ca_certificate,
        cluster_name=grant.cluster_name)


async def complete_join(api: Any, token: str, request: wpb.CompleteJoinRequest) -> wpb.CompleteJoinResponse:
    """Step 2 of a join (Trio): the Swarm node is checked, labelled, made active; the token is used up."""
    joined = await api.complete_join(token, request.node_id, request.worker_json)
    return wpb.CompleteJoinResponse(node_id=joined.node_id, hostname=joined.hostname, labels=dict(joined.labels))


def _unary(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except CumulusError as error:
            await context.abort(join_status(error), str(error))
        except Exception as error:  # a bug: INTERNAL, keep serving
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")

    return wrapper


def _admin_name() -> str:
    caller = current_caller()
    if caller is None:
        raise Unauthenticated("join tokens need an admin token")
    if not caller.admin:
        raise PermissionDenied(f"token {caller.name!r} is not an admin token; join tokens need one")
    return caller.name


def _join_token(context: Any) -> str:
    values = [value for key, value in (context.invocation_metadata() or ()) if key == "authorization"]
    return bearer_token(str(values[0]) if len(values) == 1 else None)


class JoinMethods:
    """Mixed into :class:`~cumulus.rpc.workers_servicer.WorkerServicer` (which sets ``self._api``)."""

    _api: Any

    @_unary
    async def CreateJoinToken(self, request: wpb.CreateJoinTokenRequest, context: Any) -> wpb.CreateJoinTokenResponse:
        created_by = _admin_name()
        offer = await call_trio(functools.partial(self._api.create_join_token, request.ttl_seconds,
                                                  dict(request.labels), created_by=created_by))
        return wpb.CreateJoinTokenResponse(token=offer.token, info=token_info_to_pb(offer.info), command=offer.command,
                                           script_url=offer.script_url, tls_public_key_pin=offer.pin)

    @_unary
    async def ListJoinTokens(self, request: wpb.ListJoinTokensRequest, context: Any) -> wpb.ListJoinTokensResponse:
        _admin_name()
        tokens = await call_trio(self._api.list_join_tokens)
        return wpb.ListJoinTokensResponse(tokens=[token_info_to_pb(t) for t in tokens])

    @_unary
    async def RevokeJoinToken(self, request: wpb.RevokeJoinTokenRequest, context: Any) -> wpb.JoinTokenInfo:
        _admin_name()
        if not request.id:
            raise InvalidRequest("id is empty; give the join token's id (`cumulus worker join-tokens` lists them)")
        return token_info_to_pb(await call_trio(self._api.revoke_join_token, request.id))

    @_unary
    async def RegisterWorker(self, request: wpb.RegisterWorkerRequest, context: Any) -> wpb.RegisterWorkerResponse:
        token = _join_token(context)
        return await call_trio(functools.partial(register_worker, self._api, token, request))

    @_unary
    async def CompleteJoin(self, request: wpb.CompleteJoinRequest, context: Any) -> wpb.CompleteJoinResponse:
        token = _join_token(context)
        return await call_trio(functools.partial(complete_join, self._api, token, request))
