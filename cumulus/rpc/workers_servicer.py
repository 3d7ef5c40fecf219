"""WorkerService (``proto/cumulus/v1/workers.proto``): worker membership over gRPC.

The service is the sum of two halves, each in its own module: :class:`~cumulus.rpc.join_servicer.JoinMethods`
(join tokens, and the joining host's RegisterWorker/CompleteJoin) and
:class:`~cumulus.rpc.drain_servicer.DrainMethods` (drain, activate, remove). Both call the supervisor's Python API
(``self._api``) and turn its errors into gRPC statuses like :mod:`cumulus.rpc.servicer` does.
"""

from __future__ import annotations

from typing import Any

from cumulus.rpc.drain_servicer import DrainMethods
from cumulus.rpc.generated.v1 import workers_pb2_grpc
from cumulus.rpc.join_servicer import JoinMethods


class WorkerServicer(JoinMethods, DrainMethods, workers_pb2_grpc.WorkerServiceServicer):
    def __init__(self, api: Any) -> None:
        self._api = api
