"""JoinTokenRegistry: the only writer of join tokens (the ``join_tokens`` table, :mod:`cumulus.join_table`), and the
supervisor's side of a host joining with one (``docs/operations.md``, "Join a worker").

An admin makes a token (:class:`CreateJoinToken`: answers the one line to run on the new host,
:mod:`cumulus.join_line`); the host, holding the token, registers (:class:`RegisterWorker`: its name, SSH address and
host key; answered with what it needs to join the Swarm) and, once in the Swarm, completes (:class:`CompleteJoin`:
its node id and worker JSON). Completing checks that the node is the registered host, labels it (inventory, SSH
address, the host key to pin, the token's labels: :mod:`cumulus.worker_labels`), makes it active and marks the
token used. Expiry is checked on every use, against the injected ``clock``; ended tokens are purged after 7 days.

A refused request changes nothing: every check runs before the first write, the node's labels are written in one
Swarm update, and the token's row only after it. Each register and complete is counted by outcome
(``cumulus_worker_joins_total``). Tokens are never logged, and never kept: only their hashes.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping

import docker.errors
import trio

from cumulus import join_table, metrics
from cumulus.actors.base import Actor
from cumulus.config import Settings
from cumulus.errors import InvalidRequest, NotFound, PermissionDenied, RequestRejected, Unauthenticated
from cumulus.join_line import JoinNotConfigured, check_can_join, join_command, public_key_pin, script_url
from cumulus.join_table import ID_PATTERN, JoinOutcome, JoinTokenInfo, JoinTokenState
from cumulus.journal import open_database
from cumulus.resources.swarm import SwarmError
from cumulus.worker_labels import (HOST_KEY_LABEL, LABEL_PREFIX, check_host_key, check_hostname, check_ssh_address,
                                   check_token_labels, join_labels, parse_worker_json, ssh_host)

log = logging.getLogger(__name__)

DEFAULT_TTL = 3600
MIN_TTL, MAX_TTL = 60, 7 * 86400
SWARM_TIMEOUT = 30.0
NEW_LINE = "make a new line with `cumulus worker join-command`"
_NODE_ID = re.compile(r"[A-Za-z0-9]{1,64}")


class BadJoinToken(Unauthenticated):
    """No such join token (unknown, mistyped or forged: gRPC ``UNAUTHENTICATED``)."""

    outcome = JoinOutcome.UNAUTHENTICATED


class JoinTokenSpent(PermissionDenied):
    """The join token was used, revoked, or expired (gRPC ``PERMISSION_DENIED``); the message says which, when."""

    def __init__(self, message: str, outcome: JoinOutcome) -> None:
        self.outcome = outcome
        super().__init__(message)


class JoinRefused(RequestRejected):
    """The join cannot go on as asked (gRPC ``FAILED_PRECONDITION``): another host key, another node, no node."""

    def __init__(self, message: str, outcome: JoinOutcome) -> None:
        self.outcome = outcome
        super().__init__(message)


class JoinUnavailable(RequestRejected):
    """The Swarm manager could not be asked; nothing changed, try again (gRPC ``UNAVAILABLE``)."""

    outcome = JoinOutcome.UNAVAILABLE


@dataclass(frozen=True)
class CreateJoinToken:
    """Call: a token valid ``ttl`` seconds (0: an hour), answered as a :class:`JoinOffer`."""

    ttl: float = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    created_by: str = ""


@dataclass(frozen=True)
class ListJoinTokens:
    """Call: every token not purged yet, newest first."""


@dataclass(frozen=True)
class RevokeJoinToken:
    """Call: revoke a token not used yet (idempotent); answers its info. NotFound for an unknown id."""

    id: str


@dataclass(frozen=True)
class RegisterWorker:
    """Call (the joining host): answers a :class:`JoinGrant`."""

    token: str = field(repr=False)
    hostname: str
    ssh_address: str
    host_key: str


@dataclass(frozen=True)
class CompleteJoin:
    """Call (the joined host): answers a :class:`JoinedNode`."""

    token: str = field(repr=False)
    node_id: str
    worker_json: str = field(repr=False)


@dataclass(frozen=True)
class JoinOffer:
    info: JoinTokenInfo
    token: str = field(repr=False)  # shown once, never stored
    command: str = field(repr=False)  # holds the token
    script_url: str = ""
    pin: str = ""


@dataclass(frozen=True)
class JoinGrant:
    """What a registered host needs to join the Swarm and serve the supervisor."""

    swarm_join_token: str = field(repr=False)
    manager_addresses: tuple[str, ...]
    supervisor_ssh_public_key: str
    ssh_user: str
    worker_image: str
    registry: str
    ca_certificate: str
    cluster_name: str


@dataclass(frozen=True)
class JoinedNode:
    node_id: str
    hostname: str
    labels: Mapping[str, str]


def check_ttl(ttl: float) -> float:
    if not ttl:
        return DEFAULT_TTL
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidRequest(f"ttl {ttl:g} s is out of range; give {MIN_TTL} s (1m) .. {MAX_TTL} s (7d)")
    return ttl


def at(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


class JoinTokenRegistry(Actor):
    name = "join_tokens"

    def __init__(self, settings: Settings, swarm: Any, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        path = settings.journal.path
        self.path = str(Path(path).expanduser()) if path != ":memory:" else path
        self.settings = settings
        self.swarm = swarm
        self.clock = clock
        self.db: Any = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` (the database, or a small file): in a worker thread, inline with an in-memory database
        (tests: Trio's autojump clock sees no idle wait)."""
        if self.path == ":memory:":
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    async def on_start(self) -> None:
        self.db = await self._run(open_database, self.path)
        await self.owner.own(self._open_until_stopped(), what="join token table", same_task=True)
        await self._run(join_table.open_table, self.db)

    async def handle(self, message: Any) -> Any:
        now = self.clock()
        if await self._run(join_table.purge, self.db, now):
            log.info("purged join tokens that ended more than 7 days ago")
        match message:
            case CreateJoinToken(ttl, labels, created_by):
                return await self._create(check_ttl(ttl), check_token_labels(labels), created_by, now)
            case ListJoinTokens():
                return await self._run(join_table.listing, self.db, now)
            case RevokeJoinToken(token_id):
                return await self._revoke(token_id, now)
            case RegisterWorker() | CompleteJoin():
                try:
                    answer = await (self._register(message, now) if isinstance(message, RegisterWorker)
                                    else self._complete(message, now))
                except RequestRejected as refusal:
                    metrics.current().worker_joins.labels(_outcome_of(refusal).value).inc()
                    raise
                metrics.current().worker_joins.labels(
                    (JoinOutcome.REGISTERED if isinstance(message, RegisterWorker) else JoinOutcome.JOINED).value).inc()
                return answer
            case _:
                raise TypeError(f"join_tokens: unknown message {message!r}")

    # ---- admin ----------------------------------------------------------------------------------------------

    async def _create(self, ttl: float, labels: dict[str, str], created_by: str, now: float) -> JoinOffer:
        advertise = check_can_join(self.settings)
        pin = await self._run(public_key_pin, self.settings.security.tls_cert)
        await self._run(self._host_needs)  # a setting a host would miss is refused now, not then
        token, token_id = join_table.new_join_token(await self._run(join_table.ids, self.db))
        info = JoinTokenInfo(token_id, JoinTokenState.PENDING, now, now + ttl, created_by, labels)
        await self._run(join_table.insert, self.db, info, token)
        log.info("join token %s created by %r: valid until %s, labels %s", token_id, created_by, at(info.expires_at),
                 labels or "none")
        return JoinOffer(info, token, join_command(advertise, pin, token), script_url(advertise), pin)

    async def _revoke(self, token_id: str, now: float) -> JoinTokenInfo:
        if not ID_PATTERN.fullmatch(token_id):
            raise InvalidRequest(f"{token_id[:40]!r} is not a join token id (8 hex digits, as `cumulus worker "
                                 f"join-tokens` lists them)")
        await self._run(join_table.revoke, self.db, token_id, now)
        info = await self._run(join_table.get, self.db, token_id, now)
        if info is None:
            raise NotFound(f"no join token {token_id}; `cumulus worker join-tokens` lists them")
        log.info("join token %s revoked (now %s)", token_id, info.state.value)
        return info

    # ---- the joining host -----------------------------------------------------------------------------------

    async def _valid(self, token: str, now: float) -> JoinTokenInfo:
        """The token's info if it may be used now; Unauthenticated or PermissionDenied (with when) otherwise."""
        info = await self._run(join_table.find, self.db, token, now)
        if info is None:
            raise BadJoinToken(f"the join token is not valid (unknown, mistyped or forged); {NEW_LINE}")
        who = f" by {info.hostname} ({info.ssh_address})" if info.hostname else ""
        if info.state is JoinTokenState.USED:
            raise JoinTokenSpent(f"join token {info.id} was already used at {at(info.ended_at)}{who}, node "
                                 f"{info.node_id}; a token joins one host: {NEW_LINE}", JoinOutcome.USED)
        if info.state is JoinTokenState.REVOKED:
            raise JoinTokenSpent(f"join token {info.id} was revoked at {at(info.ended_at)}; {NEW_LINE}",
                                 JoinOutcome.REVOKED)
        if info.state is JoinTokenState.EXPIRED:
            raise JoinTokenSpent(f"join token {info.id} expired at {at(info.expires_at)}; {NEW_LINE}",
                                 JoinOutcome.EXPIRED)
        return info

    async def _register(self, message: RegisterWorker, now: float) -> JoinGrant:
        info = await self._valid(message.token, now)
        hostname = check_hostname(message.hostname)
        ssh_address = check_ssh_address(message.ssh_address)
        host_key = check_host_key(message.host_key)
        if info.state is JoinTokenState.REGISTERED and info.host_key != host_key:
            raise JoinRefused(f"join token {info.id} was registered at {at(info.registered_at)} by {info.hostname} "
                              f"({info.ssh_address}) with another SSH host key than {hostname} sent now; a token "
                              f"joins one host: {NEW_LINE}", JoinOutcome.HOST_KEY_DIFFERS)
        grant = await self._grant()  # before the write: if the Swarm cannot be asked, nothing changed
        await self._run(join_table.register, self.db, info.id, hostname, ssh_address, host_key, now)
        log.info("join token %s: host %s (%s) registered", info.id, hostname, ssh_address)
        return grant

    async def _complete(self, message: CompleteJoin, now: float) -> JoinedNode:
        info = await self._valid(message.token, now)
        if info.state is not JoinTokenState.REGISTERED:
            raise JoinRefused(f"join token {info.id} has no registered host: register first (RegisterWorker)",
                              JoinOutcome.NOT_REGISTERED)
        if not _NODE_ID.fullmatch(message.node_id):
            raise InvalidRequest(f"node_id {message.node_id[:70]!r} is not a Swarm node id (`docker info --format "
                                 f"'{{{{.Swarm.NodeID}}}}'` on the host)")
        worker = parse_worker_json(message.worker_json)
        node = next((n for n in await self._swarm(self.swarm.list_nodes()) if n.id == message.node_id), None)
        if node is None:
            raise JoinRefused(f"node {message.node_id} is not in the Swarm; did `docker swarm join` succeed on "
                              f"{info.hostname}?", JoinOutcome.NOT_IN_SWARM)
        if not _is_registered_host(node, info):
            raise JoinRefused(f"Swarm node {node.id} ({node.hostname}, address {node.address}) is not the host that "
                              f"registered with join token {info.id} ({info.hostname}, SSH at {info.ssh_address})",
                              JoinOutcome.NODE_MISMATCH)
        if node.labels.get("cumulus.worker") == "true" and node.labels.get(HOST_KEY_LABEL) != info.host_key:
            raise JoinRefused(f"Swarm node {node.id} ({node.hostname}) already is a Cumulus worker with another "
                              f"host key; remove it first (`cumulus worker remove {node.hostname}`)",
                              JoinOutcome.HOST_KEY_DIFFERS)
        labels = join_labels(worker, ssh_address=info.ssh_address, ssh_user=self.settings.cluster.ssh_user,
                             host_key=info.host_key, joined_at=at(now), token_labels=info.labels)
        stale = tuple(k for k in node.labels if k.startswith(LABEL_PREFIX) and k not in labels)
        try:
            await self._swarm(self.swarm.update_node(node.id, labels_add=labels, labels_remove=stale,
                                                     availability="active"))
        except docker.errors.NotFound:
            raise JoinRefused(f"node {node.id} left the Swarm", JoinOutcome.NOT_IN_SWARM) from None
        await self._run(join_table.mark_used, self.db, info.id, node.id, now)
        log.info("join token %s used: node %s (%s) joined with %s device(s)", info.id, node.id, node.hostname,
                 labels["cumulus.device_count"])
        return JoinedNode(node.id, node.hostname, labels)

    async def _swarm(self, call: Any) -> Any:
        """A call to the Swarm manager, bounded; JoinUnavailable when it fails (nothing was changed by us)."""
        try:
            with trio.fail_after(SWARM_TIMEOUT):
                return await call
        except (SwarmError, trio.TooSlowError) as error:
            raise JoinUnavailable(f"the Swarm manager could not be asked ({error or 'timed out'}); try again") from None

    async def _grant(self) -> JoinGrant:
        join = await self._swarm(self.swarm.join_info())
        public_key, ca = await self._run(self._host_needs)
        cluster = self.settings.cluster
        return JoinGrant(join.worker_token, tuple(join.manager_addresses), public_key, cluster.ssh_user,
                         cluster.default_image(), self.settings.server.http_advertise, ca, self.settings.supervisor_id)

    def _host_needs(self) -> tuple[str, str]:
        """The supervisor's SSH public key (``cluster.ssh_key`` + ``.pub``) and the CA (``security.tls_ca``)."""
        if not self.settings.cluster.ssh_key:
            raise JoinNotConfigured("cluster.ssh_key is empty: set the private key the supervisor logs in to "
                                    "workers with (its public half, KEY.pub, goes to each new host)")
        public = Path(self.settings.cluster.ssh_key + ".pub").expanduser()
        try:
            fields = public.read_text().split()
        except OSError as error:
            raise JoinNotConfigured(f"cannot read {public}, the public half of cluster.ssh_key: "
                                    f"{error.strerror or error} (make it: ssh-keygen -y -f KEY > KEY.pub)") from None
        if len(fields) < 2:
            raise JoinNotConfigured(f"{public} holds no SSH public key")
        ca = ""
        if self.settings.security.tls_ca:
            try:
                ca = Path(self.settings.security.tls_ca).expanduser().read_text()
            except OSError as error:
                raise JoinNotConfigured(f"cannot read security.tls_ca ({self.settings.security.tls_ca}): "
                                        f"{error.strerror or error}") from None
        return f"{fields[0]} {fields[1]}", ca

    @asynccontextmanager
    async def _open_until_stopped(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.db.close()


def _is_registered_host(node: Any, info: JoinTokenInfo) -> bool:
    """The node's Swarm address is the registered SSH address's host (its hostname, when that is a name)."""
    host = ssh_host(info.ssh_address)
    try:
        registered = ipaddress.ip_address(host)
    except ValueError:
        return bool(node.hostname) and node.hostname == info.hostname
    try:
        return node.address is not None and ipaddress.ip_address(node.address) == registered
    except ValueError:
        return False


def _outcome_of(error: RequestRejected) -> JoinOutcome:
    outcome = getattr(error, "outcome", None)
    if isinstance(outcome, JoinOutcome):
        return outcome
    return JoinOutcome.INVALID if isinstance(error, InvalidRequest) else JoinOutcome.NOT_CONFIGURED


__all__ = ["CompleteJoin", "CreateJoinToken", "JoinGrant", "JoinOffer", "JoinRefused", "JoinTokenRegistry",
           "JoinUnavailable", "JoinedNode", "ListJoinTokens", "RegisterWorker", "RevokeJoinToken", "check_ttl"]
