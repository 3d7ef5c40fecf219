"""Who is calling: :class:`Caller`, the identity and limits of the token an RPC came with.

The RPC layer resolves a bearer token to a ``Caller`` and passes it to every job call of the supervisor's API;
the cluster actor uses it to keep each user to their own jobs and limits. A ``Caller`` is immutable and holds
no secret (only the token's name).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """A user's limits; 0 means no limit."""

    max_running: int = 0
    max_queued: int = 0
    max_gpu: float = 0.0
    """Total GPU share the user's live jobs may hold (2 = two whole devices)."""
    rate: float = 0.0
    """Submissions per second, as a token bucket whose burst is max(1, 2 x rate)."""


@dataclass(frozen=True)
class Caller:
    """The token a call came with: its name, whether it is an admin token, and its limits."""

    name: str
    admin: bool = False
    limits: Limits = Limits()

    def may_see(self, owner: str) -> bool:
        """Whether this caller may see (and act on) a job owned by ``owner``: its own jobs, or all for admins."""
        return self.admin or owner == self.name


LOCAL_ADMIN = Caller("", admin=True)
"""The caller of a supervisor that runs without tokens (``security.insecure``) and of in-process API use."""


TOKEN_PREFIX = "cumulus_"
TOKEN_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"


def new_token_secret() -> str:
    """A fresh bearer token: ``cumulus_`` and 43 URL-safe characters (256 random bits)."""
    import secrets

    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    """What is stored of a token: its SHA-256 (a token has 256 random bits, so no salt or slow hash is needed)."""
    import hashlib

    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret."""

    name: str
    admin: bool
    limits: Limits
    created_at: float
    revoked_at: float | None = None

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.admin, self.limits)
