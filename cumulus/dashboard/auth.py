"""Who is signed in to the dashboard: its sessions, the CSRF token of each, and the sign-in and sign-out pages.

A session is a random id in the ``cumulus_session`` cookie (HttpOnly, SameSite=Strict, Secure under TLS) that
names, in this process only, the token it was opened with. Every request resolves that token again through the
supervisor's :class:`~cumulus.actors.tokens.Credentials` (``caller_for``, as the RPC layer does for every call),
so a revoked or rotated-away token ends its sessions at once, and a stolen cookie never outlives its token (nor
this process: sessions are not kept across restarts). The token itself is never put in a cookie, a URL or a log.

CSRF: each session's token is an HMAC of its id with a key made per process; every POST but the sign-in must
carry it (form field ``csrf`` or header ``X-CSRF-Token``). The sign-in form has no session to bind one to; a
login CSRF (a page elsewhere signing the browser in as its own user) is refused by the Origin check that every
POST gets: a browser always sends Origin with a cross-site POST, and SameSite=Strict keeps the cookie off them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from cumulus.dashboard.render import page
from cumulus.identity import Caller

log = logging.getLogger(__name__)

COOKIE = "cumulus_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_IDLE_SECONDS = 8 * 3600  # an unattended browser is signed out after a working day
SESSION_MAX_SECONDS = 24 * 3600  # and any session after a day, whatever its use
MAX_SESSIONS = 10_000  # only a valid token opens one; past this the oldest go first
MAX_FORM_BYTES = 16 * 1024  # the forms hold a token, a CSRF token and a path
NOT_A_TOKEN = "not a valid token"


class NeedSignIn(Exception):
    """The request has no valid session: pages redirect to the sign-in, fragments and streams answer 401."""


class Refused(Exception):
    """A POST without a valid CSRF token, or from another origin: 403 with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Session:
    secret: str  # the token: resolved again on every request, never sent back to the browser
    opened: float
    seen: float


@dataclass(frozen=True)
class SignedIn:
    """The caller of a request with a valid session, and that session's CSRF token (for the page's forms)."""

    caller: Caller
    session: str
    csrf: str


class Sessions:
    """The sessions of this process. ``credentials`` is the supervisor's token view (``caller_for(secret)``)."""

    def __init__(self, credentials: Any, *, secure: bool) -> None:
        self.credentials = credentials
        self.secure = secure
        self._sessions: dict[str, _Session] = {}
        self._key = secrets.token_bytes(32)  # per process: a restart ends every session and CSRF token

    def csrf_for(self, session: str) -> str:
        return hmac.new(self._key, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()

    def open(self, secret: str) -> tuple[str, Caller] | None:
        """A new session for ``secret`` and its caller, or None when the token is not valid."""
        caller = self.credentials.caller_for(secret) if self.credentials is not None else None
        if caller is None:
            return None
        now = time.time()
        self._expire(now)
        while len(self._sessions) >= MAX_SESSIONS:  # dicts keep insertion order: the oldest first
            self._sessions.pop(next(iter(self._sessions)))
        session = secrets.token_urlsafe(32)
        self._sessions[session] = _Session(secret, now, now)
        return session, caller

    def close(self, session: str) -> None:
        self._sessions.pop(session, None)

    def resolve(self, request: Request) -> SignedIn | None:
        """The request's caller, from its session's token as the credentials know it now; None otherwise."""
        session_id = request.cookies.get(COOKIE, "")
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.time()
        if now - session.seen > SESSION_IDLE_SECONDS or now - session.opened > SESSION_MAX_SECONDS:
            self.close(session_id)
            return None
        caller = self.credentials.caller_for(session.secret) if self.credentials is not None else None
        if caller is None:  # revoked or rotated since: the session ends with its token
            self.close(session_id)
            return None
        session.seen = now
        return SignedIn(caller, session_id, self.csrf_for(session_id))

    def require(self, request: Request) -> SignedIn:
        signed = self.resolve(request)
        if signed is None:
            raise NeedSignIn()
        return signed

    def _expire(self, now: float) -> None:
        stale = [sid for sid, s in self._sessions.items()
                 if now - s.seen > SESSION_IDLE_SECONDS or now - s.opened > SESSION_MAX_SECONDS]
        for sid in stale:
            del self._sessions[sid]

    def set_cookie(self, response: Response, session: str) -> None:
        response.set_cookie(COOKIE, session, max_age=SESSION_MAX_SECONDS, path="/", secure=self.secure,
                            httponly=True, samesite="strict")

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", secure=self.secure, httponly=True, samesite="strict")


# ---- request checks -----------------------------------------------------------------------------------------------


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded POST body as a dict (first value of each field); a bigger body than a form is refused."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused("the form is too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise Refused("the form is not urlencoded UTF-8") from None
    return {key: values[0] for key, values in fields.items()}


def check_origin(request: Request) -> None:
    """Refuse a POST that a browser sent from another origin (Origin, else Referer, must be this very server).
    Clients that send neither (curl, scripts) are no CSRF vector: a browser always sends Origin on a POST."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return
    parts = urlsplit(source)
    host = request.headers.get("host", "")
    if source == "null" or (parts.scheme, parts.netloc) != (request.url.scheme, host):
        raise Refused("this form was sent from another site: the request is refused (CSRF protection)")


def check_csrf(request: Request, signed: SignedIn, form: dict[str, str] | None) -> None:
    check_origin(request)
    sent = request.headers.get(CSRF_HEADER) or (form or {}).get(CSRF_FIELD, "")
    if not sent or not hmac.compare_digest(sent, signed.csrf):
        raise Refused("missing or wrong CSRF token: reload the page and try again")


def local_path(target: str | None) -> str:
    """``target`` if it is a path of this site (never another host: no open redirect), else ``/``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(c) < 0x20 for c in target):
        return "/"
    return target


def sign_in_url(request: Request) -> str:
    """The sign-in page, to come back to ``request``'s page afterwards."""
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(path, safe="")


# ---- the sign-in and sign-out pages -------------------------------------------------------------------------------


class SignInPages:
    """GET/POST /login and POST /logout."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    async def form(self, request: Request) -> Response:
        target = local_path(request.query_params.get("next"))
        if self.sessions.resolve(request) is not None:
            return RedirectResponse(target, status_code=303)
        return page("login.html", {"signed": None, "next": target, "error": ""})

    async def submit(self, request: Request) -> Response:
        check_origin(request)  # login CSRF: no page elsewhere may sign this browser in as someone else
        form = await read_form(request)
        target = local_path(form.get("next"))
        opened = self.sessions.open(form.get("token", "").strip())
        if opened is None:
            client = request.client.host if request.client else "?"
            log.info("dashboard: sign-in refused from %s: unknown or revoked token", client)  # never the token
            return page("login.html", {"signed": None, "next": target, "error": NOT_A_TOKEN
                                       + " (unknown or revoked): use a token from `cumulus token create NAME`"}, 401)
        session, caller = opened
        log.info("dashboard: %s signed in", caller.name or "the local admin")
        response = RedirectResponse(target, status_code=303)
        self.sessions.set_cookie(response, session)
        return response

    async def sign_out(self, request: Request) -> Response:
        signed = self.sessions.resolve(request)
        if signed is not None:
            check_csrf(request, signed, await read_form(request))
            self.sessions.close(signed.session)
        response = RedirectResponse("/login", status_code=303)
        self.sessions.clear_cookie(response)
        return response


__all__ = ["COOKIE", "CSRF_FIELD", "NOT_A_TOKEN", "NeedSignIn", "Refused", "Sessions", "SignInPages", "SignedIn",
           "check_csrf", "check_origin", "local_path", "read_form", "sign_in_url"]
