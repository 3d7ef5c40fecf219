"""Each user's credentials for private package indexes (``cumulus index login``), stored like tokens: in the
journal's database, table ``index_credentials``, one row per (owner, index URL), the username and password sealed
with the journal's key (:class:`~cumulus.journal_rows.SecretBox`, as a job's secret env) and never in clear text.

The :class:`~cumulus.journal.Journal` actor owns the connection and answers the calls defined here
(:class:`IndexCredentialsCall`: store, list, delete, and :class:`CredentialsFor`, what the requirements install
step asks for the job's owner); :func:`answer` runs them on the database (blocking, in the journal's thread).
An owner is the name of the token that stored the credentials: a user sees, replaces and deletes their own only
(an admin may list everyone's, never their secrets), and a job is installed with its owner's credentials only.

The secret leaves the journal only as an :class:`IndexCredential` (its ``repr`` hides both values), on its way to
the installer's netrc file (:mod:`cumulus.resources.index_netrc`). Nothing here logs a username or a password or
puts one in an error message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from cumulus.errors import ConfigError, InvalidRequest, NotFound, Unsatisfiable
from cumulus.jobformat.sources import check_index_url

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS index_credentials (
    owner           TEXT NOT NULL,          -- the name of the token that stored them
    index_url       TEXT NOT NULL,          -- normalised (a trailing '/'), one of jobs.package_indexes when stored
    sealed          BLOB NOT NULL,          -- SecretBox: owner, index_url, username, password; never clear text
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    PRIMARY KEY (owner, index_url)
) WITHOUT ROWID;
"""
MAX_USERNAME = 256
MAX_PASSWORD = 4096


@dataclass(frozen=True)
class IndexCredential:
    """A username and password (or token) for one index. ``repr`` never shows them."""

    username: str = field(repr=False)
    password: str = field(repr=False)


@dataclass(frozen=True)
class IndexCredentialsInfo:
    """Stored credentials as listed: whose, for which index, since when. Never the secret."""

    owner: str
    index_url: str
    created_at: float
    updated_at: float


class IndexCredentialsCall:
    """The calls the journal answers with :func:`answer`."""


@dataclass(frozen=True)
class StoreCredentials(IndexCredentialsCall):
    """Call: store or replace ``owner``'s credentials for ``index_url`` (checked by the caller against the allowed
    indexes); answers ``(IndexCredentialsInfo, replaced)``."""

    owner: str
    index_url: str
    credential: IndexCredential


@dataclass(frozen=True)
class ListCredentials(IndexCredentialsCall):
    """Call: ``owner``'s stored credentials (everyone's when ``owner`` is None), as IndexCredentialsInfo."""

    owner: str | None


@dataclass(frozen=True)
class DeleteCredentials(IndexCredentialsCall):
    """Call: forget ``owner``'s credentials for ``index_url``; answers their info. NotFound when there are none."""

    owner: str
    index_url: str


@dataclass(frozen=True)
class CredentialsFor(IndexCredentialsCall):
    """Call: ``owner``'s credentials for ``index_url`` (an :class:`IndexCredential`), None when none are stored.
    :class:`~cumulus.errors.Unsatisfiable` when they were sealed with another key than the journal's now."""

    owner: str
    index_url: str


def normalised_url(index_url: str) -> str:
    """``index_url`` with a trailing ``/`` (InvalidRequest for a URL that is no index URL, e.g. with credentials)."""
    return check_index_url(index_url)


def check_allowed(index_url: str, allowed: Iterable[str]) -> str:
    """``index_url`` normalised, one of ``allowed`` (``jobs.package_indexes``); otherwise
    :class:`~cumulus.errors.Unsatisfiable` (FAILED_PRECONDITION) naming them."""
    url = normalised_url(index_url)
    indexes = [i.rstrip("/") + "/" for i in allowed]
    if url not in indexes:
        listed = ", ".join(indexes) if indexes else "none: jobs install from the cluster's default index only"
        raise Unsatisfiable(f"{url[:200]!r} is not a package index this cluster allows (jobs.package_indexes: "
                            f"{listed}); credentials are stored for allowed indexes only")
    return url


def check_credential(username: str, password: str) -> IndexCredential:
    """The pair, if it can be written to a netrc file (printable, no line breaks); InvalidRequest otherwise,
    without echoing either value."""
    for what, value, limit in (("username", username, MAX_USERNAME), ("password", password, MAX_PASSWORD)):
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"the {what} is empty; give the index's {what} (or token)")
        if len(value) > limit:
            raise InvalidRequest(f"the {what} is longer than {limit} characters")
        if not value.isprintable():
            raise InvalidRequest(f"the {what} has a line break or another control character; give it without")
    return IndexCredential(username, password)


def answer(db: Any, box: Any, call: IndexCredentialsCall) -> Any:
    """Run ``call`` on the journal database ``db`` (sqlite3, rows as mappings), sealing with ``box``."""
    match call:
        case StoreCredentials(owner, index_url, credential):
            return _store(db, box, owner, index_url, credential)
        case ListCredentials(owner):
            query, args = ("SELECT * FROM index_credentials ORDER BY owner, index_url", ()) if owner is None else \
                ("SELECT * FROM index_credentials WHERE owner = ? ORDER BY index_url", (owner,))
            return [_info(row) for row in db.execute(query, args).fetchall()]
        case DeleteCredentials(owner, index_url):
            return _delete(db, owner, index_url)
        case CredentialsFor(owner, index_url):
            return _open(db, box, owner, index_url)
    raise TypeError(f"index credentials: unknown call {call!r}")


def _store(db: Any, box: Any, owner: str, index_url: str, credential: IndexCredential
           ) -> tuple[IndexCredentialsInfo, bool]:
    url = normalised_url(index_url)
    # The owner and the URL are sealed with the secret: a sealed value copied to another row does not open there.
    sealed = box.seal({"owner": owner, "index_url": url, "username": credential.username,
                       "password": credential.password})
    now = time.time()
    with db:
        replaced = db.execute("SELECT 1 FROM index_credentials WHERE owner = ? AND index_url = ?",
                              (owner, url)).fetchone() is not None
        db.execute("INSERT INTO index_credentials (owner, index_url, sealed, created_at, updated_at) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT(owner, index_url) DO UPDATE SET sealed = excluded.sealed, "
                   "updated_at = excluded.updated_at", (owner, url, sealed, now, now))
    row = db.execute("SELECT * FROM index_credentials WHERE owner = ? AND index_url = ?", (owner, url)).fetchone()
    log.info("index credentials of %r for %s %s", owner, url, "replaced" if replaced else "stored")
    return _info(row), replaced


def _delete(db: Any, owner: str, index_url: str) -> IndexCredentialsInfo:
    url = normalised_url(index_url)
    row = db.execute("SELECT * FROM index_credentials WHERE owner = ? AND index_url = ?", (owner, url)).fetchone()
    if row is None:
        raise NotFound(f"no credentials stored for {url[:200]!r} by {owner!r}; `cumulus index list` shows yours")
    with db:
        db.execute("DELETE FROM index_credentials WHERE owner = ? AND index_url = ?", (owner, url))
    log.info("index credentials of %r for %s deleted", owner, url)
    return _info(row)


def _open(db: Any, box: Any, owner: str, index_url: str) -> IndexCredential | None:
    row = db.execute("SELECT sealed FROM index_credentials WHERE owner = ? AND index_url = ?",
                     (owner, index_url)).fetchone()
    if row is None:
        return None
    try:
        values = box.open(row["sealed"])
    except ConfigError:
        values = {}
    if values.get("owner") != owner or values.get("index_url") != index_url:
        raise Unsatisfiable(f"the credentials stored for {index_url[:200]!r} cannot be opened (the supervisor's "
                            f"journal key changed since they were stored): store them again with `cumulus index "
                            f"login {index_url[:200]}`")
    return IndexCredential(str(values.get("username", "")), str(values.get("password", "")))


def _info(row: Any) -> IndexCredentialsInfo:
    return IndexCredentialsInfo(row["owner"], row["index_url"], row["created_at"], row["updated_at"])


__all__ = ["CredentialsFor", "DeleteCredentials", "IndexCredential", "IndexCredentialsCall", "IndexCredentialsInfo",
           "ListCredentials", "SCHEMA", "StoreCredentials", "answer", "check_allowed", "check_credential",
           "normalised_url"]
