"""The gRPC server: grpc.aio running on the asyncio loop of :mod:`cumulus.asyncio_bridge`, inside Trio.

Secure by default: TLS (mutual TLS when ``security.client_ca`` is set) and a bearer token on every call
(:mod:`cumulus.rpc.auth`). ``security.insecure`` serves plaintext without tokens, and says so loudly in the log;
without it a server with no certificate refuses to start.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import grpc
import trio

from cumulus.asyncio_bridge import call_asyncio, open_asyncio_bridge
from cumulus.config import SecuritySettings, parse_host_port
from cumulus.errors import ConfigError, CumulusError
from cumulus.metrics import OFF, Metrics
from cumulus.rpc.auth import AuthInterceptor
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc, indexes_pb2_grpc, workers_pb2_grpc
from cumulus.rpc.index_servicer import PackageIndexServicer
from cumulus.rpc.servicer import OrchestratorServicer
from cumulus.rpc.standard import add_standard_services, keep_health_current
from cumulus.rpc.workers_servicer import WorkerServicer

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 0.5
HEALTH_RESERVE = 64  # calls beyond grpc.max_concurrent_rpcs that only the open methods (health) can use


class ListenError(CumulusError):
    """The server could not bind its address (in use, or not an address of this machine)."""


INSECURE_WARNING = ("INSECURE: serving plaintext gRPC without tokens on %s (--insecure): anyone who can reach this "
                    "address can run code on the cluster's machines; use it for development on loopback only")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``security`` (None when insecure). Raises ConfigError naming the setting to fix."""
    if security.insecure:
        return None
    if not (security.tls_cert and security.tls_key):
        raise ConfigError("security.tls_cert", "TLS is on by default and no certificate is set: give "
                          "security.tls_cert and security.tls_key (`cumulus local up` makes them for the local "
                          "cluster), or pass --insecure for a plaintext, unauthenticated development server")

    def read(key: str, path: str) -> bytes:
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as error:
            raise ConfigError(key, f"cannot read {path}: {error.strerror or error}") from None

    client_ca = read("security.client_ca", security.client_ca) if security.client_ca else None
    return grpc.ssl_server_credentials(
        [(read("security.tls_key", security.tls_key), read("security.tls_cert", security.tls_cert))],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


async def serve_grpc(
    api: Any,
    listen: str,
    *,
    security: SecuritySettings,
    credentials: Any | None = None,
    max_message_bytes: int = 64 * 1024 * 1024,
    max_concurrent_rpcs: int | None = None,
    metrics: Metrics = OFF,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the Cumulus API on ``listen`` (HOST:PORT; port 0 picks a free one) until cancelled.

    ``security`` says how (TLS, mutual TLS, or insecure); ``credentials`` (``caller_for(token)``) checks tokens,
    required unless ``security.insecure``; every call is counted in ``metrics``. Reports the bound ``HOST:PORT``
    through ``task_status`` once it accepts connections. Raises :class:`ListenError` if the address cannot be bound,
    :class:`ConfigError` when TLS is not configured. Cancellation stops the server: in-flight RPCs get ``STOP_GRACE_SECONDS`` to finish (shielded,
    bounded), then are cancelled; streams end with CANCELLED.
    """
    host, _ = parse_host_port(listen, key="grpc.listen", allow_any_port=True)
    tls = server_credentials(security)
    if not security.insecure and credentials is None:
        raise ConfigError("security.insecure", "tokens are on by default and no token registry was given")
    if security.insecure:  # on a reachable address, as loud as the log gets
        log.log(logging.WARNING if is_loopback(host) else logging.CRITICAL, INSECURE_WARNING, listen)
    async with open_asyncio_bridge():
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(None if security.insecure else credentials, max_calls=max_concurrent_rpcs,
                                          metrics=metrics)],
            # The interceptor holds job calls to max_concurrent_rpcs; the rest is room for health checks.
            maximum_concurrent_rpcs=None if max_concurrent_rpcs is None else max_concurrent_rpcs + HEALTH_RESERVE,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second supervisor on the same port must fail, not share it
            ]
        )
        cumulus_pb2_grpc.add_OrchestratorServiceServicer_to_server(OrchestratorServicer(api), server)
        workers_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(api), server)
        indexes_pb2_grpc.add_PackageIndexServiceServicer_to_server(PackageIndexServicer(api), server)
        health = add_standard_services(server)
        try:
            port = server.add_insecure_port(listen) if tls is None else server.add_secure_port(listen, tls)
        except RuntimeError as error:
            raise ListenError(f"cannot listen on {listen}: {error}") from None
        if not port:
            raise ListenError(f"cannot listen on {listen}: address in use or not local")
        await call_asyncio(server.start)
        bound = f"{'[' + host + ']' if ':' in host else host}:{port}"
        log.info("gRPC server listening on %s (%s)", bound, "INSECURE: plaintext, no tokens" if tls is None else
                 "TLS, client certificates required" if security.client_ca else "TLS, bearer tokens")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_health_current, health, api)
                task_status.started(bound)
                await trio.sleep_forever()
        finally:
            with trio.move_on_after(STOP_GRACE_SECONDS + 2, shield=True):
                await call_asyncio(server.stop, STOP_GRACE_SECONDS)
            log.info("gRPC server on %s stopped", bound)
