"""Join tokens at rest: the ``join_tokens`` table of the journal database, the token format, and what a token is now.

A join token is ``cumulus_join_<id>_<secret>``: ``id`` (8 hex digits) is public (listed, revoked by), ``secret``
has 256 random bits. Only the SHA-256 of the whole token is stored. A token's state (:class:`JoinTokenState`) is
derived from its row and the time: ``USED`` and ``REVOKED`` stay; otherwise ``EXPIRED`` from ``expires_at`` on,
else ``PENDING`` or ``REGISTERED`` (a host registered with it). Rows are purged :data:`PURGE_AFTER` seconds after
a token ended (used, revoked, or expired).

Pure functions on a ``sqlite3`` connection; the :class:`~cumulus.actors.join_tokens.JoinTokenRegistry` is their
only caller, and the only writer of the table.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Mapping

JOIN_TOKEN_PREFIX = "cumulus_join_"
PURGE_AFTER = 7 * 86400
_TOKEN = re.compile(r"cumulus_join_(?P<id>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43})")
ID_PATTERN = re.compile(r"[0-9a-f]{8}")

JOIN_TOKENS_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
    id              TEXT PRIMARY KEY,       -- public: 8 hex digits, the token's first characters
    hash            TEXT NOT NULL,          -- sha256 of the whole token; the token itself is never stored
    state           TEXT NOT NULL,          -- pending | registered | used | revoked (expired: from expires_at)
    created_at      REAL NOT NULL,
    expires_at      REAL NOT NULL,
    created_by      TEXT NOT NULL DEFAULT '',  -- the admin token's name
    labels          TEXT NOT NULL DEFAULT '{}',  -- JSON: put on the node as cumulus.label.<key>
    hostname        TEXT NOT NULL DEFAULT '',
    ssh_address     TEXT NOT NULL DEFAULT '',
    host_key        TEXT NOT NULL DEFAULT '',  -- public: pinned on the node at the join's end
    node_id         TEXT NOT NULL DEFAULT '',
    registered_at   REAL,
    ended_at        REAL                    -- used or revoked at
);
"""


class JoinTokenState(enum.Enum):
    PENDING = "pending"
    REGISTERED = "registered"
    USED = "used"
    EXPIRED = "expired"
    REVOKED = "revoked"


class JoinOutcome(enum.Enum):
    """How a host's register or complete ended (``cumulus_worker_joins_total{outcome}``)."""

    REGISTERED = "registered"
    JOINED = "joined"
    UNAUTHENTICATED = "unauthenticated"  # no such token: unknown, mistyped, forged
    USED = "used"
    REVOKED = "revoked"
    EXPIRED = "expired"
    HOST_KEY_DIFFERS = "host_key_differs"
    NOT_REGISTERED = "not_registered"  # complete before register
    NOT_IN_SWARM = "not_in_swarm"
    NODE_MISMATCH = "node_mismatch"  # the node is not the registered host
    INVALID = "invalid"  # a malformed field
    UNAVAILABLE = "unavailable"  # the Swarm manager could not be asked
    NOT_CONFIGURED = "not_configured"  # a setting the host needs is missing


@dataclass(frozen=True)
class JoinTokenInfo:
    """A join token as listed: never its secret."""

    id: str
    state: JoinTokenState
    created_at: float
    expires_at: float
    created_by: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    ssh_address: str = ""
    host_key: str = ""
    node_id: str = ""
    registered_at: float | None = None
    ended_at: float | None = None


def new_join_token(taken: set[str]) -> tuple[str, str]:
    """A fresh token and its id (not one of ``taken``)."""
    while True:
        token_id = secrets.token_hex(4)
        if token_id not in taken:
            return f"{JOIN_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}", token_id


def token_id_of(token: str) -> str | None:
    """The id of a well-formed join token; None for anything else."""
    match = _TOKEN.fullmatch(token)
    return match["id"] if match else None


def join_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_table(db: sqlite3.Connection) -> None:
    with db:
        db.executescript(JOIN_TOKENS_SCHEMA)


def insert(db: sqlite3.Connection, info: JoinTokenInfo, token: str) -> None:
    with db:
        db.execute("INSERT INTO join_tokens (id, hash, state, created_at, expires_at, created_by, labels) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (info.id, join_token_hash(token), info.state.value, info.created_at, info.expires_at,
                    info.created_by, json.dumps(dict(info.labels), sort_keys=True)))


def ids(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT id FROM join_tokens")}


def find(db: sqlite3.Connection, token: str, now: float) -> JoinTokenInfo | None:
    """The token's info; None unless it is well-formed, known, and its hash matches (compared in constant time)."""
    token_id = token_id_of(token)
    row = db.execute("SELECT * FROM join_tokens WHERE id = ?", (token_id,)).fetchone() if token_id else None
    if row is None or not hmac.compare_digest(row["hash"], join_token_hash(token)):
        return None
    return info_of(row, now)


def get(db: sqlite3.Connection, token_id: str, now: float) -> JoinTokenInfo | None:
    row = db.execute("SELECT * FROM join_tokens WHERE id = ?", (token_id,)).fetchone()
    return None if row is None else info_of(row, now)


def listing(db: sqlite3.Connection, now: float) -> list[JoinTokenInfo]:
    """Every token not purged yet, newest first."""
    return [info_of(row, now) for row in db.execute("SELECT * FROM join_tokens ORDER BY created_at DESC, id")]


def info_of(row: Any, now: float) -> JoinTokenInfo:
    stored = JoinTokenState(row["state"])
    state = stored
    if stored in (JoinTokenState.PENDING, JoinTokenState.REGISTERED) and now >= row["expires_at"]:
        state = JoinTokenState.EXPIRED
    return JoinTokenInfo(row["id"], state, row["created_at"], row["expires_at"], row["created_by"],
                         json.loads(row["labels"]), row["hostname"], row["ssh_address"], row["host_key"],
                         row["node_id"], row["registered_at"], row["ended_at"])


def register(db: sqlite3.Connection, token_id: str, hostname: str, ssh_address: str, host_key: str,
             now: float) -> None:
    with db:
        db.execute("UPDATE join_tokens SET state = ?, hostname = ?, ssh_address = ?, host_key = ?, "
                   "registered_at = COALESCE(registered_at, ?) WHERE id = ?",
                   (JoinTokenState.REGISTERED.value, hostname, ssh_address, host_key, now, token_id))


def mark_used(db: sqlite3.Connection, token_id: str, node_id: str, now: float) -> None:
    with db:
        db.execute("UPDATE join_tokens SET state = ?, node_id = ?, ended_at = ? WHERE id = ?",
                   (JoinTokenState.USED.value, node_id, now, token_id))


def revoke(db: sqlite3.Connection, token_id: str, now: float) -> None:
    """Revoke a token not used yet (idempotent; a used token stays used: its host is in the cluster)."""
    with db:
        db.execute("UPDATE join_tokens SET state = ?, ended_at = ? WHERE id = ? AND state IN (?, ?)",
                   (JoinTokenState.REVOKED.value, now, token_id, JoinTokenState.PENDING.value,
                    JoinTokenState.REGISTERED.value))


def purge(db: sqlite3.Connection, now: float) -> int:
    """Forget tokens that ended (used, revoked, expired) more than :data:`PURGE_AFTER` seconds ago."""
    horizon = now - PURGE_AFTER
    with db:
        cursor = db.execute("DELETE FROM join_tokens WHERE (ended_at IS NOT NULL AND ended_at < ?) OR "
                            "(ended_at IS NULL AND expires_at < ?)", (horizon, horizon))
    return cursor.rowcount


__all__ = ["ID_PATTERN", "JOIN_TOKEN_PREFIX", "JOIN_TOKENS_SCHEMA", "PURGE_AFTER", "JoinOutcome", "JoinTokenInfo",
           "JoinTokenState", "find", "get", "ids", "insert", "join_token_hash", "listing", "new_join_token",
           "open_table", "purge", "register", "revoke", "token_id_of"]
