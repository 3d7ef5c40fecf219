"""PackageIndexService (``proto/cumulus/v1/indexes.proto``): each user's credentials for the private package
indexes the cluster allows (``jobs.package_indexes``).

Every RPC needs a token, of any user (the interceptor of :mod:`cumulus.rpc.auth` refuses a call without one): a
caller stores, lists and deletes their own credentials; listing everyone's needs an admin token. Each RPC is one
call on the supervisor's Python API (:meth:`~cumulus.app.SupervisorApi.store_index_credentials`, ...); errors
become statuses as in :mod:`cumulus.rpc.servicer` (an index that is not allowed FAILED_PRECONDITION, a bad URL or
password INVALID_ARGUMENT, none stored NOT_FOUND). The password is passed on, never logged nor echoed back.
"""

from __future__ import annotations

import functools
from typing import Any

from cumulus.asyncio_bridge import call_trio
from cumulus.errors import Unauthenticated
from cumulus.identity import Caller
from cumulus.index_credentials import IndexCredentialsInfo, normalised_url
from cumulus.rpc.auth import NO_TOKEN, current_caller
from cumulus.rpc.generated.v1 import indexes_pb2 as ipb
from cumulus.rpc.generated.v1 import indexes_pb2_grpc
from cumulus.rpc.servicer import _unary


def _caller() -> Caller:
    caller = current_caller()
    if caller is None:  # the interceptor lets no call of this service in without a token
        raise Unauthenticated(NO_TOKEN)
    return caller


def info_to_pb(info: IndexCredentialsInfo) -> ipb.IndexCredentialsInfo:
    msg = ipb.IndexCredentialsInfo(index_url=info.index_url, owner=info.owner)
    msg.created_at.FromNanoseconds(int(info.created_at * 1e9))
    msg.updated_at.FromNanoseconds(int(info.updated_at * 1e9))
    return msg


class PackageIndexServicer(indexes_pb2_grpc.PackageIndexServiceServicer):
    def __init__(self, api: Any) -> None:
        self._api = api

    @_unary
    async def StoreIndexCredentials(self, request: ipb.StoreIndexCredentialsRequest, context: Any
                                    ) -> ipb.StoreIndexCredentialsResponse:
        caller = _caller()
        info, replaced = await call_trio(functools.partial(
            self._api.store_index_credentials, request.index_url, request.username, request.password, caller=caller))
        return ipb.StoreIndexCredentialsResponse(info=info_to_pb(info), replaced=replaced)

    @_unary
    async def ListIndexCredentials(self, request: ipb.ListIndexCredentialsRequest, context: Any
                                   ) -> ipb.ListIndexCredentialsResponse:
        caller = _caller()
        infos = await call_trio(functools.partial(self._api.list_index_credentials, all_users=request.all_users,
                                                  caller=caller))
        allowed = [normalised_url(url) for url in self._api.settings.jobs.package_indexes]
        return ipb.ListIndexCredentialsResponse(credentials=[info_to_pb(i) for i in infos], allowed_indexes=allowed)

    @_unary
    async def DeleteIndexCredentials(self, request: ipb.DeleteIndexCredentialsRequest, context: Any
                                     ) -> ipb.DeleteIndexCredentialsResponse:
        caller = _caller()
        info = await call_trio(functools.partial(self._api.delete_index_credentials, request.index_url, caller=caller))
        return ipb.DeleteIndexCredentialsResponse(info=info_to_pb(info))
