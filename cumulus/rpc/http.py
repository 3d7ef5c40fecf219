"""The supervisor's HTTP port (``server.http_listen``): ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz``
for probes, the workers' image registry and join paths, and the web dashboard on every other path. Hypercorn serves
it on Trio, with the gRPC port's TLS certificate unless the supervisor is insecure (and asks for a client
certificate when the gRPC port does).

* ``/metrics``: every metric of :mod:`cumulus.metrics`, the gauges of "now" read from the actors first.
* ``/healthz``: 200 while the process answers at all (liveness: restart it when this fails).
* ``/readyz``: 200 while the supervisor serves jobs (its tree is up, its journal recovered), 503 with the reason
  otherwise (readiness: send no traffic).
* ``/v2/``: the worker image registry, read-only, for the workers' dockerd (:mod:`cumulus.rpc.http_registry`).
* ``/join/...``, ``/v1/join/...``: what a joining host fetches and posts (:mod:`cumulus.rpc.http_join`); register
  and complete need its join token. With ``security.client_ca`` (client certificates required) nothing can join.
* everything else: the dashboard (:mod:`cumulus.dashboard`): ``/`` and its pages, which need a sign-in with an API
  token (a session cookie, Secure under TLS); an unknown path is a 404 that names the paths above.

The paths above need no token: metrics carry counts and names (users, workers), never a job's data or a secret.
The dashboard shows a signed-in user their own jobs (an admin all), through the same API as the RPC servicer.
Keep the port on loopback or a private network (the default is loopback).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import Counter
from functools import partial
from typing import Any, Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from cumulus.config import SecuritySettings, parse_host_port
from cumulus.dashboard import dashboard_app
from cumulus.errors import CumulusError, SupervisorUnavailable
from cumulus.metrics import DeviceShare, Metrics, Snapshot
from cumulus.rpc.http_join import is_join_path, serve_join
from cumulus.rpc.http_registry import is_registry_path, serve_registry

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
SNAPSHOT_TIMEOUT_SECONDS = 5.0
STOP_GRACE_SECONDS = 1.0

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def snapshot_of(api: Any) -> Snapshot:
    """Ask the supervisor's actors what it looks like now (not ready, and empty, while its tree is not up)."""
    try:
        workers = await api.list_workers()
        jobs = await api.list_jobs(include_finished=False)
    except SupervisorUnavailable:
        return Snapshot(False, {}, 0, 0.0, {}, ())
    now = time.time()
    waiting = [job.submitted_at for job in jobs if job.queue_position > 0]
    return Snapshot(
        ready=True,
        jobs_by_state=Counter(job.state.value for job in jobs),
        queue_length=len(waiting),
        oldest_queued_seconds=max(0.0, now - min(waiting)) if waiting else 0.0,
        workers_by_state=Counter(worker.state for worker in workers),
        workers_by_availability=Counter(worker.availability for worker in workers),
        devices=tuple(DeviceShare(worker.hostname, str(device.index), device.name, device.is_gpu, device.used_share)
                      for worker in workers for device in worker.devices))


OWN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class HttpApp:
    """The ASGI application of the HTTP port. ``secure``: served over TLS (the dashboard's cookie is Secure)."""

    def __init__(self, api: Any, metrics: Metrics, *, secure: bool = True) -> None:
        self.api = api
        self.metrics = metrics
        self.dashboard = dashboard_app(api, secure=secure)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if is_registry_path(scope["path"]):  # the worker image registry (read-only; it answers writes itself)
            await serve_registry(getattr(self.api, "image_store", None), scope, send)
            return
        if is_join_path(scope["path"]):  # a joining host's script, files, register and complete (POST)
            await serve_join(self.api, scope, receive, send)
            return
        if scope["path"] not in OWN_PATHS:  # the dashboard: its pages, sign-in and static files (and the 404s)
            await self.dashboard(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"use GET\n", extra=[(b"allow", b"GET, HEAD")])
            return
        match scope["path"]:
            case "/metrics":
                if not self.metrics.enabled:
                    await _respond(send, 404, b"metrics are off (metrics.enabled: false)\n")
                    return
                with trio.move_on_after(SNAPSHOT_TIMEOUT_SECONDS):
                    self.metrics.set_snapshot(await snapshot_of(self.api))
                await _respond(send, 200, self.metrics.render(), content_type=PROMETHEUS_TEXT)
            case "/healthz":
                await _respond(send, 200, b"ok\n")
            case "/readyz":
                health = await self.api.health()
                if health.serving:
                    await _respond(send, 200, b"ready\n")
                else:
                    await _respond(send, 503, f"not ready: {health.reason}\n".encode())


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Send, status: int, body: bytes, *, content_type: bytes = b"text/plain; charset=utf-8",
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def hypercorn_config(listen: str, security: SecuritySettings) -> Config:
    """Hypercorn's settings for ``listen``: TLS from ``security`` unless insecure; its own logs go to ours."""
    config = Config()
    config.bind = [listen]
    config.errorlog = logging.getLogger("cumulus.rpc.http.server")
    config.accesslog = None
    config.graceful_timeout = STOP_GRACE_SECONDS
    if not security.insecure:
        config.certfile, config.keyfile = security.tls_cert, security.tls_key
        if security.client_ca:
            config.ca_certs, config.verify_mode = security.client_ca, ssl.CERT_REQUIRED
    return config


class HttpListenError(CumulusError):
    """The HTTP port could not be bound (in use, or not an address of this machine)."""


async def serve_http(api: Any, metrics: Metrics, listen: str, *, security: SecuritySettings,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the HTTP port on ``listen`` (HOST:PORT; port 0 picks a free one) until cancelled; report the bound
    ``http(s)://HOST:PORT`` through ``task_status``. Raises :class:`HttpListenError` when the address cannot be
    bound. Cancellation closes the listener and ends the requests in flight."""
    parse_host_port(listen, key="server.http_listen", allow_any_port=True)
    config = hypercorn_config(listen, security)
    failure: OSError | None = None
    async with trio.open_nursery() as nursery:
        try:
            app = HttpApp(api, metrics, secure=not security.insecure)
            urls = await nursery.start(partial(serve, app, config, mode="asgi"))
        except OSError as error:
            failure = error  # nothing was started: the nursery ends at once
        except BaseExceptionGroup as group:  # hypercorn binds inside nurseries of its own
            bind_errors, others = group.split(OSError)
            if bind_errors is None or others is not None:
                raise
            failure = _first(bind_errors)
        else:
            log.info("HTTP port listening on %s (/metrics, /healthz, /readyz; the dashboard at %s/)", urls[0], urls[0])
            task_status.started(urls[0])
    if failure is not None:
        raise HttpListenError(f"cannot listen on {listen} (server.http_listen): {failure.strerror or failure}")


def _first(group: BaseException) -> OSError:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    assert isinstance(group, OSError)
    return group


__all__ = ["HttpApp", "HttpListenError", "serve_http", "snapshot_of"]
