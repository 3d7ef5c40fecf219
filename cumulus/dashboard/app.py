"""The dashboard's ASGI application: its routes, the security headers of every answer, and how errors become
pages (a request without a session goes to the sign-in; a refused POST is a 403; an unknown path a 404 that names
the HTTP port's other paths).

:func:`dashboard_app` builds it for one supervisor API; :class:`cumulus.rpc.http.HttpApp` hands it every path it
does not serve itself. It runs inside the supervisor's Trio loop (hypercorn's Trio worker; Starlette runs on Trio
through anyio) and reads everything through :class:`~cumulus.app.SupervisorApi` with the signed-in caller.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cumulus.dashboard.auth import NeedSignIn, Refused, Sessions, SignInPages, sign_in_url
from cumulus.dashboard.cluster import ClusterPages
from cumulus.dashboard.events import JobEvents
from cumulus.dashboard.job import JobPages
from cumulus.dashboard.jobs import JobsPage
from cumulus.dashboard.render import error_page
from cumulus.dashboard.usage import UsagePage
from cumulus.errors import CumulusError, SupervisorUnavailable
from cumulus.rpc.status import status_for

if TYPE_CHECKING:
    from cumulus.app import SupervisorApi

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

# No inline script or style anywhere (the pages' JavaScript is in static files), so a job name or a log line that
# slipped past escaping still could not run; no other site may frame the pages (clickjacking of Cancel).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
NOT_FOUND = "not found: the dashboard is at /; the HTTP port also serves /metrics, /healthz and /readyz\n"
INSECURE_WARNING = ("dashboard: served over plain HTTP (security.insecure): its session cookie is not Secure and "
                    "tokens typed into its sign-in form cross the network in clear; use it on loopback only")

# HTTP statuses of the gRPC codes that cumulus.rpc.status gives the API's errors (one mapping of errors: theirs).
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.UNAUTHENTICATED: 401,
               grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.FAILED_PRECONDITION: 409,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503}


class SecurityHeaders:
    """Adds the security headers to every answer; pages and streams are never cached (they hold a user's jobs),
    static files are revalidated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"cache-control"]
                headers += [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"),
                            (b"x-content-type-options", b"nosniff"), (b"cross-origin-opener-policy", b"same-origin"),
                            (b"cache-control", b"no-cache" if static else b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_page(request: Request) -> bool:
    """A browser navigation (redirected to the sign-in) rather than a fragment or a stream (answered 401)."""
    path = request.url.path
    return not (path.endswith(("/fragment", "/events")) or request.headers.get("hx-request"))


async def _need_sign_in(request: Request, exc: Exception) -> Response:
    if _wants_page(request):
        return RedirectResponse(sign_in_url(request), status_code=303)
    return PlainTextResponse("not signed in: sign in at /login\n", status_code=401)


async def _refused(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, Refused) else str(exc)
    return error_page(403, "Refused", message)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return PlainTextResponse(NOT_FOUND, status_code=404)
    return PlainTextResponse(f"{status}: {exc.detail if isinstance(exc, HTTPException) else 'error'}\n",
                             status_code=status, headers=getattr(exc, "headers", None))


async def _cumulus_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SupervisorUnavailable):
        return error_page(503, "Unavailable", str(exc))
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("dashboard: %s failed: %s", request.url.path, exc)
    return error_page(HTTP_STATUS.get(code, 500), "Error", str(exc))


async def _home(request: Request) -> Response:
    return RedirectResponse("/cluster", status_code=303)


def dashboard_app(api: SupervisorApi | None, *, secure: bool) -> ASGIApp:
    """The dashboard for ``api`` (None: every page is unavailable; the HTTP port's tests run it so). ``secure``:
    served over TLS, so the session cookie is Secure."""
    if not secure:
        log.warning(INSECURE_WARNING)
    sessions = Sessions(getattr(api, "credentials", None), secure=secure)
    sign_in = SignInPages(sessions)
    cluster = ClusterPages(api, sessions)
    jobs = JobsPage(api, sessions)
    job = JobPages(api, sessions)
    events = JobEvents(api, sessions)
    usage = UsagePage(api, sessions)
    routes = [
        Route("/", _home, methods=["GET"]),
        Route("/login", sign_in.form, methods=["GET"]),
        Route("/login", sign_in.submit, methods=["POST"]),
        Route("/logout", sign_in.sign_out, methods=["POST"]),
        Route("/cluster", cluster.page, methods=["GET"]),
        Route("/cluster/fragment", cluster.fragment, methods=["GET"]),
        Route("/jobs", jobs.page, methods=["GET"]),
        Route("/jobs/{job_id}", job.page, methods=["GET"]),
        Route("/jobs/{job_id}/fragment", job.fragment, methods=["GET"]),
        Route("/jobs/{job_id}/events", events.stream, methods=["GET"]),
        Route("/jobs/{job_id}/cancel", job.cancel, methods=["POST"]),
        Route("/jobs/{job_id}/pause", job.pause, methods=["POST"]),
        Route("/jobs/{job_id}/resume", job.resume, methods=["POST"]),
        Route("/usage", usage.page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={  # bodies are read by auth.read_form only, bounded there
        NeedSignIn: _need_sign_in, Refused: _refused, HTTPException: _http_error, CumulusError: _cumulus_error})
    return SecurityHeaders(app)


__all__ = ["CONTENT_SECURITY_POLICY", "SecurityHeaders", "dashboard_app"]
