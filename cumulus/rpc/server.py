"""The gRPC server: grpc.aio running on the asyncio loop of :mod:`cumulus.asyncio_bridge`, inside Trio."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import trio

from cumulus.asyncio_bridge import call_asyncio, open_asyncio_bridge
from cumulus.config import parse_host_port
from cumulus.errors import CumulusError
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.servicer import OrchestratorServicer

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 0.5


class ListenError(CumulusError):
    """The server could not bind its address (in use, or not an address of this machine)."""


async def serve_grpc(
    api: Any,
    listen: str,
    *,
    max_message_bytes: int = 64 * 1024 * 1024,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the Cumulus API on ``listen`` (HOST:PORT; port 0 picks a free one) until cancelled.

    Reports the bound ``HOST:PORT`` through ``task_status`` once it accepts connections. Raises
    :class:`ListenError` if the address cannot be bound. Cancellation stops the server: in-flight RPCs get
    ``STOP_GRACE_SECONDS`` to finish (shielded, bounded), then are cancelled; streams end with CANCELLED.
    """
    host, _ = parse_host_port(listen, key="grpc.listen", allow_any_port=True)
    async with open_asyncio_bridge():
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second supervisor on the same port must fail, not share it
            ]
        )
        cumulus_pb2_grpc.add_OrchestratorServiceServicer_to_server(OrchestratorServicer(api), server)
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as error:
            raise ListenError(f"cannot listen on {listen}: {error}") from None
        if not port:
            raise ListenError(f"cannot listen on {listen}: address in use or not local")
        await call_asyncio(server.start)
        bound = f"{'[' + host + ']' if ':' in host else host}:{port}"
        log.info("gRPC server listening on %s", bound)
        try:
            task_status.started(bound)
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(STOP_GRACE_SECONDS + 2, shield=True):
                await call_asyncio(server.stop, STOP_GRACE_SECONDS)
            log.info("gRPC server on %s stopped", bound)
