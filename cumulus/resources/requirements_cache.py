"""A worker's requirements cache: a job's requirements, installed once per node by a trusted step before the job
starts, and mounted read-only into every job that asks for the same list (so a ``network="none"`` job still
gets its packages, and the job's own container never runs pip).

Layout on the worker, under ``<jobs_dir>/.requirements`` (:func:`cache_root`)::

    <key>/site/              what pip installed (--target): mounted read-only at /cumulus/deps in the job
    <key>/requirements.txt   the normalised list, <key>/install.log pip's output, <key>/size its bytes
    <key>/last-used          touched whenever a job takes the entry and when it ends (the LRU clock)
    .tmp-<key>-XXXXXX/       an install in progress (never mounted by a job)

``<key>`` is :func:`cache_key`: the sha256 of the normalised requirement list and the image id (the image pins
the Python version and ABI, and the pip that installs); for a job with a private index (``index_url``), also of
the index URL and the job's owner: what a user's credentials fetched from a private index is reused by that user's
jobs only, never given to another user (who may have no access to it). An entry appears only complete: the installer writes into
a fresh ``.tmp-`` directory, which is renamed to ``<key>`` (``rename(2)``, atomic) once pip succeeded. Two
attempts of this supervisor that want the same entry on the same node take turns (the second then finds it
installed); installers of two supervisors may both run, and the one that renames second discards its copy.

Eviction (:func:`evict`, after each new install): least recently used entries go while the cache is larger than
``max_bytes``, but never one used within ``min_idle_s`` (the longest a job may run: an older entry is mounted
by no job); ``.tmp-`` directories older than twice the install timeout are leftovers of a crashed supervisor.
A job started between the idle check and the removal finds its mount gone: its container is rejected (a retried
infrastructure failure), not given a half-removed directory.

Resources never import actors: the attempt calls :func:`open_requirements` with its node's SSH connection and the
Swarm client.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import posixpath
import re
import secrets
import shlex
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterable

import trio

from cumulus.errors import CumulusError
from cumulus.redaction import redact_credentials
from cumulus.resources.index_netrc import Credential, open_install_netrc
from cumulus.resources.requirements_install import (LOG_DIR, LOG_FILE, REQUIREMENTS_FILE, SITE, InstallService,
                                                   run_install_service)
from cumulus.resources.ssh import SshConnection
from cumulus.resources.swarm_client import SwarmClient, SwarmError

log = logging.getLogger(__name__)

CACHE_DIRNAME = ".requirements"
DEFAULT_WHEELHOUSE = "/var/lib/cumulus/wheelhouse"  # on the worker: wheels offered to pip; `.no-index` in it: only
KEY_VERSION = "cumulus-requirements-v1"
MAX_RELAYED_LINES = 1000  # install output lines put into the job's log; the rest is in <key>/install.log
TAIL_LINES = 40  # pip's last lines, kept for the failure's detail
POLL_BYTES = 1 << 20  # read from the install log per poll
MAX_LOG_BYTES = 16 << 20  # read from the install log in all (the installer writes it: it may never end)
MAX_LINE_CHARS = 4096
_KEY = re.compile(r"^[0-9a-f]{64}$")


class RequirementsInstallFailed(CumulusError):
    """pip could not install the job's requirements (or did not finish in time): the job's fault or its
    index's, so not retried. ``output``: pip's last lines (credentials redacted). The job fails with the result
    envelope's ``exc_type`` :data:`EXC_TYPE`, as when the runner installed the requirements itself."""

    EXC_TYPE = "cumulus.RequirementsInstallFailed"

    def __init__(self, message: str, output: str = "") -> None:
        self.message = message
        self.output = output
        super().__init__(message)


@dataclass(frozen=True)
class CacheSettings:
    """Where and how a worker's cache lives and installs. ``networks``: the installer's networks: the jobs'
    filtered network (:data:`~cumulus.resources.swarm_spec.JOB_NETWORK`, made if missing), or ``None`` for the
    worker dockerd's default network."""

    root: str
    wheelhouse: str = DEFAULT_WHEELHOUSE
    timeout: float = 900.0
    remove_timeout: float = 30.0
    max_bytes: int = 20 * 2**30
    min_idle_s: float = 86400.0
    memory_mb: int = 4096
    cpus: float = 2.0
    pids_limit: int = 4096
    tmpfs_mb: int = 1024
    networks: tuple[str, ...] | None = None


def cache_root(jobs_dir: str) -> str:
    """The cache's directory on a worker whose job directories are under ``jobs_dir`` (owned by the SSH user)."""
    return posixpath.join(jobs_dir, CACHE_DIRNAME)


def normalise_requirements(requirements: Iterable[str]) -> tuple[str, ...]:
    """Each requirement stripped, inner whitespace collapsed, duplicates dropped, sorted: the same set of
    requirements gives the same entry whatever their order (pip resolves them as one set)."""
    return tuple(sorted({" ".join(r.split()) for r in requirements if r.strip()}))


def cache_key(requirements: Iterable[str], image: str, index_url: str = "", owner: str = "") -> str:
    """The entry's name: sha256 of the normalised list and the image id (Python version, ABI and pip); with a
    private ``index_url``, of it and the job's ``owner`` too (an entry from a private index is the owner's only)."""
    scope = (f"index={index_url}", f"owner={owner}") if index_url else ()
    text = "\n".join((KEY_VERSION, image, *scope, *normalise_requirements(requirements)))
    return hashlib.sha256(text.encode()).hexdigest()


class _KeyedLocks:
    """One lock per (node, cache, key) of this process, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, ...], tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, ...]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


_installing = _KeyedLocks()


@asynccontextmanager
async def open_requirements(conn: SshConnection, client: SwarmClient, *, requirements: Iterable[str], image: str,
                            node_id: str, supervisor_id: str, job_id: str, settings: CacheSettings,
                            on_line: Callable[[str], None], index_url: str = "", owner: str = "",
                            credential: Credential | None = None) -> AsyncIterator[str]:
    """Make sure the worker behind ``conn`` (Swarm node ``node_id``) has ``requirements`` installed for
    ``image``, and yield the worker directory to mount read-only into the job (``ServiceRequest.deps_dir``).

    ``index_url``: the job's private index, the only one pip then uses, with ``credential`` (the job ``owner``'s,
    None when none are stored) as a netrc file of the installer only. ``on_line`` gets the install's output lines (``[pip] ...``, credentials redacted) and a line saying whether the
    cache was used, for the job's log. Raises :class:`RequirementsInstallFailed` when pip fails or runs past
    ``settings.timeout``; :class:`SshError` / :class:`SwarmError` when the worker or the Swarm cannot be asked
    (the installer's task rejected, say): infrastructure.

    Cancellation while installing removes the install service and its directory (shielded, bounded by
    ``settings.remove_timeout``). Leaving the block touches the entry's LRU clock (shielded, bounded, never
    raises); the entry itself stays for the next job.
    """
    reqs = normalise_requirements(requirements)
    key = cache_key(reqs, image, index_url, owner)
    entry = posixpath.join(settings.root, key)
    async with _installing.hold((conn.label, settings.root, key)):
        await _ensure(conn, client, reqs, key, entry, image=image, node_id=node_id, supervisor_id=supervisor_id,
                      job_id=job_id, settings=settings, on_line=on_line, index=(index_url, credential))
    try:
        yield posixpath.join(entry, SITE)
    finally:
        with trio.move_on_after(settings.remove_timeout, shield=True):
            try:
                await conn.run(f"touch -c -- {shlex.quote(entry + '/last-used')}", timeout=10, check=False)
            except CumulusError as error:
                log.info("requirements cache %s on %s: last-used not touched: %s", key[:12], conn.label, error)


async def _ensure(conn: SshConnection, client: SwarmClient, reqs: tuple[str, ...], key: str, entry: str, *,
                  image: str, node_id: str, supervisor_id: str, job_id: str, settings: CacheSettings,
                  on_line: Callable[[str], None], index: tuple[str, Credential | None] = ("", None)) -> None:
    probe = await conn.run_to_completion(_probe_script(settings.root, key, settings.wheelhouse), timeout=30)
    words = probe.stdout.split()
    if words[:1] == ["hit"]:
        on_line(f"[cumulus] requirements: installed already on this node (cache {key[:12]})")
        return
    if len(words) < 5 or words[0] != "miss":
        raise CumulusError(f"requirements cache on {conn.label}: unexpected answer {probe.stdout.strip()[:200]!r}")
    tmp, uid, gid, wheelhouse = words[1], int(words[2]), int(words[3]), words[4]
    done = False
    try:
        await conn.put_bytes("".join(r + "\n" for r in reqs).encode(), posixpath.join(tmp, REQUIREMENTS_FILE))
        index_url, credential = index
        source = f" from {index_url}{'' if credential else ' (no credentials stored for it)'}" if index_url else ""
        on_line(redact_credentials(f"[cumulus] installing {len(reqs)} requirement(s) on this node{source}: "
                                   f"{' '.join(reqs)}"))
        name = f"cumulus-req-{key[:16]}-{secrets.token_hex(4)}"
        if settings.networks:  # the jobs' filtered network: made by the first job that needs it, maybe not yet
            from cumulus.resources.job_network import ensure_swarm_job_network

            await ensure_swarm_job_network(client)
        output = _OutputRelay(conn, posixpath.join(tmp, LOG_FILE), on_line)
        # The owner's credentials as this install's own secret, removed after the installer (which uses it).
        async with open_install_netrc(client, name=f"{name}-netrc", supervisor_id=supervisor_id, job_id=job_id,
                                      index_url=index_url, credential=credential,
                                      remove_timeout=settings.remove_timeout) as netrc:
            svc = InstallService(
                name=name, image=image, node_id=node_id, supervisor_id=supervisor_id, job_id=job_id, key=key,
                install_dir=tmp, uid=uid, gid=gid, wheelhouse=settings.wheelhouse if wheelhouse != "none" else None,
                no_index=wheelhouse == "no-index", networks=settings.networks, memory_mb=settings.memory_mb,
                cpus=settings.cpus, pids_limit=settings.pids_limit, tmpfs_mb=settings.tmpfs_mb, index_url=index_url,
                netrc=netrc)
            end = await run_install_service(client, svc, timeout=settings.timeout,
                                            remove_timeout=settings.remove_timeout, on_poll=output.poll)
        await output.poll(final=True)
        what = redact_credentials(" ".join(reqs))
        if end.timed_out:
            raise RequirementsInstallFailed(f"pip install of {what} did not finish within {settings.timeout:g} s",
                                            output.tail())
        if end.exit_code is None:  # no container ran (rejected: image, mount, node): the cluster's fault
            raise SwarmError(f"requirements install on {conn.label}: task {end.state}: {end.error}")
        if not end.succeeded:
            errors = [ln for ln in output.last if "ERROR" in ln] or [ln for ln in output.last if ln.strip()][-3:]
            raise RequirementsInstallFailed(
                f"pip install of {what} failed (exit {end.exit_code}): " + " | ".join(errors)[-1500:], output.tail())
        result = await conn.run_to_completion(_finalize_script(tmp, entry), timeout=120, check=False)
        if result.exit_status != 0:
            raise CumulusError(f"requirements cache on {conn.label}: could not put the install in place: "
                               f"{(result.stderr or result.stdout).strip()[-300:]}")
        done = True
        on_line(f"[cumulus] requirements installed (cache {key[:12]})")
        if result.stdout.strip() == "installed":
            try:
                await evict(conn, settings)
            except CumulusError as error:  # the next install tries again
                log.warning("requirements cache on %s: eviction failed: %s", conn.label, error)
    finally:
        if not done:
            with trio.move_on_after(settings.remove_timeout, shield=True):
                await conn.run(f"rm -rf -- {shlex.quote(tmp)}", timeout=60, check=False)


def _probe_script(root: str, key: str, wheelhouse: str) -> str:
    """``hit``, or ``miss <tmp dir> <uid> <gid> none|index|no-index`` (the fresh install dir, the SSH user's ids,
    and whether the wheelhouse exists and says only it may be used)."""
    r, e, w = shlex.quote(root), shlex.quote(posixpath.join(root, key)), shlex.quote(wheelhouse)
    return (f"set -e; mkdir -p {r}; "
            f"if [ -d {e}/{SITE} ] && touch {e}/last-used; then echo hit; exit 0; fi; "
            f"tmp=$(mktemp -d {r}/.tmp-{key[:16]}-XXXXXX); chmod 755 \"$tmp\"; mkdir \"$tmp\"/{SITE} \"$tmp\"/{LOG_DIR}; "
            f"if [ -d {w} ]; then if [ -e {w}/.no-index ]; then wh=no-index; else wh=index; fi; else wh=none; fi; "
            "echo miss \"$tmp\" \"$(id -u)\" \"$(id -g)\" \"$wh\"")


def _finalize_script(tmp: str, entry: str) -> str:
    """Make the install readable by any job uid and writable by none (no set-id bits), record its size, and
    rename it into place; ``installed``, or ``reused`` when another installer was first (this copy is dropped)."""
    t, e = shlex.quote(tmp), shlex.quote(entry)
    return (f"set -e; [ -d {t}/{SITE} ]; [ ! -L {t}/{SITE} ]; [ ! -L {t}/{LOG_DIR} ]; "
            f"chmod -R u+rwX,go+rX,go-w,u-s,g-s {t}; "
            f"du -sb {t} | cut -f1 > {t}/size; touch {t}/last-used; "
            f"if mv -T {t} {e} 2>/dev/null; then echo installed; "
            f"else rm -rf {t}; [ -d {e}/{SITE} ]; echo reused; fi")


class _OutputRelay:
    """Relays what the installer wrote to its log file so far, line by line, redacted and prefixed ``[pip]``."""

    def __init__(self, conn: SshConnection, path: str, on_line: Callable[[str], None]) -> None:
        self.conn, self.path, self.on_line = conn, path, on_line
        self.relayed = 0  # whole lines read so far (a line still being written is read once it is whole)
        self.offset = 0  # bytes read so far
        self.partial = ""
        self.last: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    async def poll(self, *, final: bool = False) -> None:
        """Relay the lines written since the last poll; ``final``: the writer is gone, a last line without
        newline is whole too. The installer owns the file: it is read without following a symbolic link or
        blocking on a FIFO (``dd iflag=nofollow,nonblock``), from where the last poll stopped, at most
        ``POLL_BYTES`` a time and ``MAX_LOG_BYTES`` in all."""
        if self.offset >= MAX_LOG_BYTES:
            return
        result = await self.conn.run(
            f"dd if={shlex.quote(self.path)} iflag=nofollow,nonblock,skip_bytes,count_bytes skip={self.offset} "
            f"count={POLL_BYTES} bs=65536 status=none 2>/dev/null | LC_ALL=C tr -c '\\11\\12\\15\\40-\\176' '?'",
            timeout=30, check=False)
        chunk = result.stdout  # one character per byte read (anything but printable ASCII became '?')
        self.offset += len(chunk)
        self.partial += chunk
        lines = self.partial.split("\n")
        self.partial = lines.pop()  # after the last newline: nothing, or a line not yet whole
        if final and self.partial:
            lines.append(self.partial)
            self.partial = ""
        for raw in lines:
            line = redact_credentials(raw.rstrip("\r"))
            self.last.append(line)
            self.relayed += 1
            if self.relayed <= MAX_RELAYED_LINES:
                self.on_line(f"[pip] {line[:MAX_LINE_CHARS]}")
            elif self.relayed == MAX_RELAYED_LINES + 1:
                self.on_line(f"[cumulus] further install output is not relayed (it is in {LOG_FILE} of the cache "
                             "entry on the worker)")

    def tail(self) -> str:
        return "\n".join(self.last)


async def evict(conn: SshConnection, settings: CacheSettings) -> list[str]:
    """Remove least recently used entries while the cache holds more than ``settings.max_bytes`` (only entries
    idle for over ``settings.min_idle_s``), and install dirs older than twice the install timeout. Returns the
    removed names. Raises :class:`SshError`."""
    root = shlex.quote(settings.root)
    listing = await conn.run(
        f"cd {root} 2>/dev/null || exit 0; echo now $(date +%s); "
        'for d in *; do [ -f "$d/last-used" ] && echo entry "$d" $(stat -c %Y "$d/last-used") '
        '$(cat "$d/size" 2>/dev/null || echo 0); done; '
        'for t in .tmp-* .evicting-*; do [ -d "$t" ] && echo stale "$t" $(stat -c %Y "$t"); done; true',
        timeout=60)
    now, entries, stale = 0, [], []
    for words in (line.split() for line in listing.stdout.splitlines()):
        if words[:1] == ["now"] and len(words) == 2:
            now = int(words[1])
        elif words[:1] == ["entry"] and len(words) == 4 and _KEY.match(words[1]):
            entries.append((int(words[2]), words[1], int(words[3]) if words[3].isdigit() else 0))
        elif words[:1] == ["stale"] and len(words) == 3 and re.match(r"^\.(tmp|evicting)-[0-9a-f]+-\w+$", words[1]):
            if now - int(words[2]) > 2 * settings.timeout + 60:
                stale.append(words[1])
    victims, total = [], sum(size for _, _, size in entries)
    for used, name, size in sorted(entries):
        if total <= settings.max_bytes or now - used <= settings.min_idle_s:
            break
        victims.append(name)
        total -= size
    commands = [f"rm -rf -- {shlex.quote(name)}" for name in stale]
    idle = int(settings.min_idle_s)
    for name in victims:  # still idle at the moment of the rename; the rename makes the entry vanish at once
        gone = f".evicting-{name[:16]}-{secrets.token_hex(3)}"
        commands.append(f'if [ $(( $(date +%s) - $(stat -c %Y {name}/last-used) )) -gt {idle} ] && '
                        f"mv -T {name} {gone}; then rm -rf -- {gone}; fi")
    if commands:
        await conn.run(f"cd {root} && " + "; ".join(commands), timeout=300, check=False)
        log.info("requirements cache on %s: evicted %d entries, %d stale install dirs", conn.label, len(victims),
                 len(stale))
    return victims + stale


__all__ = ["CACHE_DIRNAME", "CacheSettings", "DEFAULT_WHEELHOUSE", "RequirementsInstallFailed", "cache_key",
           "cache_root", "evict", "normalise_requirements", "open_requirements"]
