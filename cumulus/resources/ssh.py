"""One SSH connection per worker host, shared by every job placed there (asyncssh behind the asyncio bridge).

Everything here is Trio-facing: asyncssh is only ever awaited through :func:`cumulus.asyncio_bridge.call_asyncio`,
so callers need an open bridge (``async with open_asyncio_bridge():``). Host keys are always checked against a
pinned ``known_hosts`` file; there is no way to turn that off.

This module owns the connection (:func:`open_ssh_connection`, :class:`SshConnection`: commands, SFTP files, health,
closing). Beside it, re-exported here: :mod:`cumulus.resources.ssh_process` (:class:`RemoteProcess`, a command
that never outlives its session) and :mod:`cumulus.resources.ssh_errors` (:class:`SshError` and kin,
:class:`SshResult`).
"""

from __future__ import annotations

import shlex
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import asyncssh
import trio

from cumulus.asyncio_bridge import call_asyncio
from cumulus.resources.ssh_errors import RemoteCommandFailed, RemotePathNotFound, SshError, SshResult
from cumulus.resources.ssh_process import CLOSE_TIMEOUT, RemoteProcess, wrapped_command

T = TypeVar("T")


class SshConnection:
    """One authenticated SSH connection to a worker host. Safe to use from many tasks at once."""

    def __init__(self, conn: Any, host: str, port: int) -> None:
        self._conn = conn
        self.host = host
        self.port = port
        self._sftp: Any = None
        self._sftp_lock = trio.Lock()

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    async def _aio(self, fn: Callable[..., Awaitable[T]], *args: Any, what: str, **kwargs: Any) -> T:
        """Await an asyncssh coroutine; asyncssh/OS errors become :class:`SshError`."""
        try:
            return await call_asyncio(fn, *args, **kwargs)
        except (asyncssh.Error, OSError, EOFError) as exc:
            if isinstance(exc, asyncssh.SFTPNoSuchFile) or isinstance(exc, FileNotFoundError):
                raise RemotePathNotFound(self.label, what, str(exc)) from exc
            raise SshError(self.label, what, f"{type(exc).__name__}: {exc}") from exc

    # ----------------------------------------------------------------------------------------------- commands
    async def run(self, command: str, *, timeout: float | None = None, check: bool = True) -> SshResult:
        """Run ``command`` (a shell command line, run by the user's login shell) to completion.

        Raises :class:`RemoteCommandFailed` on a non-zero status when ``check``; :class:`SshError` if the session
        cannot be opened or ``timeout`` passes (then the remote command is signalled and its channel closed).
        Cancellation closes the channel too (the remote command gets SIGTERM if it was still running).
        """

        async def _run() -> Any:
            return await self._conn.run(command, check=False, timeout=timeout)

        try:
            res = await self._aio(_run, what=f"run {command!r}")
        except SshError as exc:
            if isinstance(exc.__cause__, asyncssh.TimeoutError):
                raise SshError(self.label, f"run {command!r}", f"timed out after {timeout:g} s") from exc
            raise
        status = res.exit_status if res.exit_status is not None else -1
        result = SshResult(status, _text(res.stdout), _text(res.stderr))
        if check and status != 0:
            raise RemoteCommandFailed(self.label, command, result)
        return result

    async def run_to_completion(self, command: str, *, timeout: float = 10.0, check: bool = True) -> SshResult:
        """Like :meth:`run`, but a cancellation waits for the command's answer (at most ``timeout`` s) and takes
        effect right after it. For short commands that create something: cancelled half-way, such a command
        could still run on the host *after* the caller's cleanup, leaving what it made behind."""
        with trio.move_on_after(timeout + 1, shield=True) as scope:
            result = await self.run(command, timeout=timeout, check=check)
        if scope.cancelled_caught:
            raise SshError(self.label, f"run {command!r}", f"no answer within {timeout + 1:g} s")
        await trio.lowlevel.checkpoint()  # a cancellation that arrived meanwhile
        return result

    @asynccontextmanager
    async def open_process(
        self, command: str, *, stop_grace: float = 2.0, close_timeout: float = CLOSE_TIMEOUT
    ) -> AsyncIterator[RemoteProcess]:
        """Start ``command`` (a shell command line) on the worker and yield a :class:`RemoteProcess`.

        Promise: when the block is left (normally, by an exception, or by cancellation) the remote process and its
        process group are stopped: stdin EOF + SIGTERM at once, SIGKILL after ``stop_grace`` s if still alive
        (done on the worker by the wrapper), and the channel is closed. That cleanup is shielded and bounded by
        ``close_timeout``. If the connection itself drops, the wrapper sees stdin EOF and stops the command too.
        Starting is shielded from cancellation (bounded by ``2 * close_timeout``) so that a process that started
        is never left behind; a cancellation that arrives meanwhile takes effect just after, and stops it.
        """
        wrapped = wrapped_command(command, stop_grace)

        async def _create() -> Any:
            return await self._conn.create_process(wrapped, encoding="utf-8", errors="replace")

        # Not abandoned on cancellation: once the remote command may have started, we must hold its process
        # object to stop it. Bounded instead; cancellation is delivered right after, inside the try below.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(close_timeout * 2) as start_scope:
                process = await self._aio(_create, what=f"start {command!r}")
        if start_scope.cancelled_caught:
            raise SshError(self.label, f"start {command!r}", f"no answer within {close_timeout * 2:g} s")
        proc = RemoteProcess(self, process, command)
        try:
            yield proc
        finally:
            await proc.stop(close_timeout)

    async def is_alive(self, timeout: float = 5.0) -> bool:
        """Cheap health probe: ``True`` if ``true`` ran on the host within ``timeout`` s. Never raises
        (except Cancelled)."""
        with trio.move_on_after(timeout):
            try:
                await self.run("true", timeout=timeout)
                return True
            except SshError:
                return False
        return False

    async def wait_closed(self) -> None:
        """Return once the connection is closed (by either side, or because keepalives went unanswered)."""
        await call_asyncio(self._conn.wait_closed)

    # ------------------------------------------------------------------------------------------------- files
    async def _sftp_client(self) -> Any:
        async with self._sftp_lock:
            if self._sftp is None:
                self._sftp = await self._aio(self._conn.start_sftp_client, what="start sftp")
            return self._sftp

    async def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote_path`` (replacing it) and set its mode. Raises :class:`SshError`."""
        sftp = await self._sftp_client()

        async def _put() -> None:
            async with sftp.open(remote_path, "wb") as f:
                await f.write(data)
            await sftp.chmod(remote_path, mode)

        await self._aio(_put, what=f"write {remote_path}")

    async def chmod(self, remote_path: str, mode: int) -> None:
        """Set ``remote_path``'s mode over the SFTP channel (no process on the worker). Raises :class:`SshError`."""
        sftp = await self._sftp_client()
        await self._aio(sftp.chmod, remote_path, mode, what=f"chmod {remote_path}")

    async def get_bytes(self, remote_path: str, max_bytes: int) -> bytes:
        """Read the whole of ``remote_path``. Raises :class:`RemotePathNotFound` if it does not exist and
        :class:`SshError` if it is larger than ``max_bytes`` (then nothing is read)."""
        sftp = await self._sftp_client()

        async def _get() -> bytes | None:
            async with sftp.open(remote_path, "rb") as f:
                # Read what the file holds, not max_bytes: asyncssh reads in parallel blocks, and every block
                # past the end is a request answered with an EOF error.
                size = (await f.stat()).size or 0
                return None if size > max_bytes else await f.read(size)

        data = await self._aio(_get, what=f"read {remote_path}")
        if data is None:
            raise SshError(self.label, f"read {remote_path}", f"larger than {max_bytes} bytes")
        return data

    async def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Create directory ``path`` and missing parents (``mkdir -p``), then set ``path``'s mode. Idempotent."""
        await self.run(f"mkdir -p -- {shlex.quote(path)} && chmod {mode:o} -- {shlex.quote(path)}", timeout=30)

    async def rmtree(self, path: str) -> None:
        """Remove ``path`` and everything below it (``rm -rf``). Idempotent: a missing path is fine.
        Raises :class:`RemoteCommandFailed` if something could not be removed (e.g. files of another user in a
        directory we cannot write)."""
        await self.run(f"rm -rf -- {shlex.quote(path)}", timeout=60)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection (every session on it ends). Shielded, bounded, idempotent, never raises."""
        with trio.move_on_after(timeout, shield=True):
            try:
                self._conn.close()
                await call_asyncio(self._conn.wait_closed)
            except Exception:  # noqa: BLE001
                pass


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


@asynccontextmanager
async def open_ssh_connection(
    host: str,
    port: int,
    *,
    user: str,
    key_path: str,
    known_hosts_path: str,
    connect_timeout: float = 10,
    keepalive_interval: float = 5,
    keepalive_count_max: int = 3,
) -> AsyncIterator[SshConnection]:
    """Connect to ``host:port`` as ``user`` with the private key at ``key_path``; the host key must match
    ``known_hosts_path`` (always pinned). Yields an :class:`SshConnection`.

    Raises :class:`SshError` (host + reason: refused, timed out, host key not verifiable, auth failed) if the
    connection cannot be made within ``connect_timeout`` s. Keepalives detect a dead host after about
    ``keepalive_interval * keepalive_count_max`` s. Leaving the block closes the connection (shielded, bounded);
    every remote process still attached to it then sees stdin EOF and is stopped by its wrapper.
    """
    if not known_hosts_path:
        raise SshError(f"{host}:{port}", "connect", "a pinned known_hosts file is required")
    label = f"{host}:{port}"

    async def _connect() -> Any:
        return await asyncssh.connect(
            host,
            port,
            username=user,
            client_keys=[key_path],
            known_hosts=known_hosts_path,
            connect_timeout=connect_timeout,
            keepalive_interval=keepalive_interval,
            keepalive_count_max=keepalive_count_max,
            agent_path=None,
            config=None,
            login_timeout=connect_timeout,
        )

    try:
        with trio.fail_after(connect_timeout + 1):
            raw = await call_asyncio(_connect)
    except trio.TooSlowError as exc:
        raise SshError(label, "connect", f"timed out after {connect_timeout:g} s") from exc
    except (asyncssh.Error, OSError, ValueError) as exc:
        raise SshError(label, "connect", f"{type(exc).__name__}: {exc}") from exc
    conn = SshConnection(raw, host, port)
    try:
        yield conn
    finally:
        await conn.close()


__all__ = [
    "CLOSE_TIMEOUT",
    "RemoteCommandFailed",
    "RemotePathNotFound",
    "RemoteProcess",
    "SshConnection",
    "SshError",
    "SshResult",
    "open_ssh_connection",
]
