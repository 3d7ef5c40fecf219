"""TokenRegistry: the supervisor's bearer tokens, kept as hashes in the ``tokens`` table of the journal database,
and :class:`Credentials`, the read-only view of them that the RPC layer checks every call against.

The registry is the only writer of both. After every change it replaces the credentials' mapping (hash ->
:class:`~cumulus.identity.Caller`) as a whole, so a revoked or rotated-away token is refused from the next call on,
and a reader never sees a half-made mapping. The token itself is never stored nor logged: :class:`CreateToken` and
:class:`RotateToken` return it once.

Rotation gives a token's name a new secret and keeps everything else (admin flag, limits, creation time, and so
the jobs it owns): the answer to a leaked token when the user should stay who they are. A revoked name cannot be
rotated (revoking is final; names are never reused).

At start, ``admin_token_file`` (written by ``cumulus local up``, or by an operator) is the admin token named
``admin``: created, or replaced when the file holds a new token; a revoked one stays revoked. That file is
authoritative for ``admin``: ``cumulus local up`` and the deployment read the admin token from it, and it may be a
read-only secret mount, so a rotation over RPC could be neither written back nor kept across a restart (the next
start would put the file's token back). Rotating ``admin`` while the file is configured is therefore refused,
saying to write a new token to the file and restart, which replaces it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, AsyncIterator, Mapping

import trio

from cumulus.actors.base import Actor
from cumulus.errors import AlreadyExists, ConfigError, InvalidRequest, NotFound, RequestRejected
from cumulus.identity import (TOKEN_NAME_PATTERN, TOKEN_PREFIX, Caller, Limits, TokenInfo, new_token_secret,
                              token_hash)
from cumulus.journal import open_database

log = logging.getLogger(__name__)

ADMIN_TOKEN_NAME = "admin"
_NAME = re.compile(TOKEN_NAME_PATTERN)


class Credentials:
    """Which token hashes are valid now, and whose they are. Written by the :class:`TokenRegistry` only."""

    def __init__(self) -> None:
        self._callers: Mapping[str, Caller] = MappingProxyType({})

    def caller_for(self, secret: str) -> Caller | None:
        """The caller a bearer token stands for; None for an unknown or revoked token."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        return self._callers.get(token_hash(secret))

    def _replace(self, callers: dict[str, Caller]) -> None:
        self._callers = MappingProxyType(dict(callers))


@dataclass(frozen=True)
class CreateToken:
    """Call: make a token; answers ``(TokenInfo, secret)``. AlreadyExists when the name is taken (even revoked:
    names are never reused, so an old job's owner cannot become someone else)."""

    name: str
    admin: bool = False
    limits: Limits = Limits()


@dataclass(frozen=True)
class ListTokens:
    """Call: every token, revoked ones included, by name."""


@dataclass(frozen=True)
class RevokeToken:
    """Call: revoke a token by name (idempotent); answers its TokenInfo. NotFound for an unknown name."""

    name: str


@dataclass(frozen=True)
class RotateToken:
    """Call: give a token a new secret, keeping its name, admin flag and limits; answers ``(TokenInfo, secret)``.
    The old secret is refused from the next call on. NotFound for an unknown name; RequestRejected
    (FAILED_PRECONDITION) for a revoked token, and for ``admin`` while it comes from ``admin_token_file``."""

    name: str


def check_limits(limits: Limits) -> Limits:
    for field, value in asdict(limits).items():
        if not (0 <= value < 1e9) or value != value:
            raise InvalidRequest(f"{field}={value!r} is out of range; use 0 (no limit) or a positive number")
    return limits


class TokenRegistry(Actor):
    name = "tokens"

    def __init__(self, path: str, credentials: Credentials, admin_token_file: str = "") -> None:
        super().__init__()
        self.path = str(Path(path).expanduser()) if path != ":memory:" else path
        self.credentials = credentials
        self.admin_token_file = admin_token_file
        self.db: Any = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the database: in a worker thread (the journal may hold SQLite's write lock for a
        moment), inline for an in-memory database (tests: Trio's autojump clock sees no idle wait)."""
        if self.path == ":memory:":
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    async def on_start(self) -> None:
        self.db = await self._run(open_database, self.path)
        await self.owner.own(self._open_until_stopped(), what="token table", same_task=True)
        if self.admin_token_file:
            await self._run(self._bootstrap_admin, self._read_admin_token())
        self.credentials._replace(await self._run(self._callers))

    async def handle(self, message: Any) -> Any:
        match message:
            case CreateToken(name, admin, limits):
                answer = await self._run(self._create, name, admin, check_limits(limits))
            case ListTokens():
                return await self._run(self._tokens)
            case RevokeToken(name):
                answer = await self._run(self._revoke, name)
            case RotateToken(name):
                answer = await self._run(self._rotate, name)
            case _:
                raise TypeError(f"tokens: unknown message {message!r}")
        self.credentials._replace(await self._run(self._callers))  # from the next call on
        return answer

    def _read_admin_token(self) -> str:
        try:
            secret = Path(self.admin_token_file).expanduser().read_text().strip()
        except OSError as error:
            raise ConfigError("security.admin_token_file", f"cannot read {self.admin_token_file}: "
                                                           f"{error.strerror or error}") from None
        if not secret.startswith(TOKEN_PREFIX) or len(secret) < len(TOKEN_PREFIX) + 32:
            raise ConfigError("security.admin_token_file",
                              f"{self.admin_token_file} does not hold a Cumulus token (cumulus_...)")
        return secret

    def _bootstrap_admin(self, secret: str) -> None:
        """Make the file's token the admin token ``admin``: created, or its hash replaced when the file holds a
        new token. A revoked admin token stays revoked while the file holds that same token (a leaked token must
        not come back with a restart); writing a new token to the file replaces it."""
        digest = token_hash(secret)
        row = self.db.execute("SELECT hash, revoked_at FROM tokens WHERE name = ?", (ADMIN_TOKEN_NAME,)).fetchone()
        if row is not None and row["hash"] == digest:
            if row["revoked_at"] is not None:
                log.error("the admin token in %s was revoked; it stays revoked: write a new token to the file "
                          "(`cumulus local up` makes one when the file is missing) and restart", self.admin_token_file)
            return
        with self.db:
            self.db.execute(
                "INSERT INTO tokens (name, hash, admin, limits, created_at) VALUES (?, ?, 1, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET hash = excluded.hash, admin = 1, revoked_at = NULL",
                (ADMIN_TOKEN_NAME, digest, json.dumps(asdict(Limits())), time.time()))
        if row is not None:
            log.warning("the admin token was replaced by the one in %s", self.admin_token_file)

    def _create(self, name: str, admin: bool, limits: Limits) -> tuple[TokenInfo, str]:
        if not _NAME.fullmatch(name):
            raise InvalidRequest(f"token name {name[:40]!r} is not allowed; use 1-63 of a-z, 0-9, '.', '_', '-', "
                                 f"starting with a letter or digit")
        if self.db.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
            raise AlreadyExists(f"a token named {name!r} exists already (names are never reused, even after "
                                f"revoke); choose another name")
        secret = new_token_secret()
        info = TokenInfo(name, admin, limits, time.time())
        with self.db:
            self.db.execute("INSERT INTO tokens (name, hash, admin, limits, created_at) VALUES (?, ?, ?, ?, ?)",
                            (name, token_hash(secret), int(admin), json.dumps(asdict(limits)), info.created_at))
        log.info("token %r created (admin: %s, limits: %s)", name, admin, limits)
        return info, secret

    def _revoke(self, name: str) -> TokenInfo:
        with self.db:
            self.db.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                            (time.time(), name))
        info = next((t for t in self._tokens() if t.name == name), None)
        if info is None:
            raise NotFound(f"no token named {name!r}; `cumulus token list` shows them")
        log.info("token %r revoked", name)
        return info

    def _rotate(self, name: str) -> tuple[TokenInfo, str]:
        row = self.db.execute("SELECT * FROM tokens WHERE name = ?", (name,)).fetchone()
        if row is None:
            # name[:64]: a valid name is at most 63 characters; any other must not swell the error's trailer
            raise NotFound(f"no token named {name[:64]!r}; `cumulus token list` shows them, `cumulus token create "
                           f"NAME` makes one")
        if row["revoked_at"] is not None:
            raise RequestRejected(f"token {name!r} is revoked, and a revoked token cannot be rotated (names are "
                                  f"never reused); make a new one with `cumulus token create NEW-NAME`")
        if name == ADMIN_TOKEN_NAME and self.admin_token_file:
            # The file wins at every start (see the module docstring): a rotation here would not last.
            raise RequestRejected(f"token {name!r} comes from security.admin_token_file, which is read at every "
                                  f"start; write a new token to that file (`cumulus local up` makes one when the "
                                  f"file is missing) and restart the supervisor: the old token is refused from then on")
        secret = new_token_secret()
        with self.db:
            self.db.execute("UPDATE tokens SET hash = ? WHERE name = ?", (token_hash(secret), name))
        info = _info(row)
        log.info("token %r rotated (admin: %s, limits: %s); its previous secret is refused from now on", name,
                 info.admin, info.limits)
        return info, secret

    def _tokens(self) -> list[TokenInfo]:
        return [_info(row) for row in self.db.execute("SELECT * FROM tokens ORDER BY name").fetchall()]

    def _callers(self) -> dict[str, Caller]:
        """Every valid token's hash and its caller."""
        rows = self.db.execute("SELECT hash, name FROM tokens WHERE revoked_at IS NULL").fetchall()
        infos = {t.name: t for t in self._tokens()}
        return {row["hash"]: infos[row["name"]].caller for row in rows}

    @asynccontextmanager
    async def _open_until_stopped(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.db.close()


def _info(row: Any) -> TokenInfo:
    """A row of the ``tokens`` table as listed (its hash left out)."""
    return TokenInfo(row["name"], bool(row["admin"]), Limits(**json.loads(row["limits"])), row["created_at"],
                     row["revoked_at"])
