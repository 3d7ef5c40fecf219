"""One SSH connection per worker host, shared by every job placed there (asyncssh behind the asyncio bridge).

Everything here is Trio-facing: asyncssh is only ever awaited through :func:`cumulus.asyncio_bridge.call_asyncio`,
so callers need an open bridge (``async with open_asyncio_bridge():``). Host keys are always checked against a
pinned ``known_hosts`` file; there is no way to turn that off.

Remote processes (:meth:`SshConnection.open_process`) run under a small wrapper on the worker (``python3``) that
forwards stdin to the command and stops the command's whole process group when stdin reaches EOF (the session or
the whole connection closed) or when the wrapper gets SIGTERM/SIGHUP/SIGINT (the channel's ``signal`` request,
which OpenSSH >= 7.8 honours for non-pty sessions: verified on OpenSSH 9.2). So a remote process never outlives
its session, even when the supervisor dies without saying goodbye.
"""

from __future__ import annotations

import shlex
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import asyncssh
import trio

from cumulus.asyncio_bridge import call_asyncio
from cumulus.errors import CumulusError

T = TypeVar("T")

#: How long a shielded close (of a process or the connection) may take before it is abandoned.
CLOSE_TIMEOUT = 5.0


class SshError(CumulusError):
    """An SSH operation failed; the message names the host and what was being done."""

    def __init__(self, host: str, what: str, detail: str = "") -> None:
        self.host = host
        self.what = what
        super().__init__(f"ssh {host}: {what}" + (f": {detail}" if detail else ""))


class RemoteCommandFailed(SshError):
    """``run(..., check=True)`` saw a non-zero exit status; ``result`` holds the full :class:`SshResult`."""

    def __init__(self, host: str, command: str, result: "SshResult") -> None:
        self.result = result
        tail = (result.stderr or result.stdout).strip()[-500:]
        super().__init__(host, f"command {command!r} exited with status {result.exit_status}", tail)


class RemotePathNotFound(SshError):
    """A remote file or directory does not exist."""


@dataclass(frozen=True)
class SshResult:
    """What a finished remote command left: exit status (``-1`` if killed by a signal), stdout and stderr text."""

    exit_status: int
    stdout: str
    stderr: str


# Runs on the worker: forwards stdin to the command (in its own process group), and stops that group when stdin
# reaches EOF (after GRACE s) or on SIGTERM/SIGHUP/SIGINT: SIGTERM, GRACE s, then SIGKILL. Exits with the
# command's status. Python 3.5+ only (select/EINTR semantics of PEP 475).
_WRAPPER = r"""
import os, select, signal, subprocess, sys, time
g = float(sys.argv[1])
c = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, preexec_fn=os.setpgrp)
class Stop(Exception):
    pass
def on_sig(*a):
    raise Stop()
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, on_sig)
def wait(t):
    end = time.monotonic() + t
    while c.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    return c.poll() is not None
try:
    while c.poll() is None:
        if select.select([0], [], [], 0.2)[0]:
            d = os.read(0, 65536)
            if not d:
                try:
                    c.stdin.close()
                except OSError:
                    pass
                wait(g)
                break
            try:
                c.stdin.write(d)
                c.stdin.flush()
            except OSError:
                pass
except Stop:
    pass
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, signal.SIG_IGN)
for sig in (signal.SIGTERM, signal.SIGKILL):
    if c.poll() is not None:
        break
    try:
        os.killpg(c.pid, sig)
    except OSError:
        pass
    wait(g)
try:
    os.killpg(c.pid, signal.SIGKILL)
except OSError:
    pass
rc = c.wait()
sys.exit(rc if rc >= 0 else 128 - rc)
"""


class RemoteProcess:
    """A command running on the worker inside one SSH session. Use through :meth:`SshConnection.open_process`."""

    def __init__(self, conn: "SshConnection", process: Any, command: str) -> None:
        self._conn = conn
        self._process = process
        self.command = command

    async def readline(self) -> str | None:
        """The next stdout line without its newline, or ``None`` at EOF (the process closed stdout / exited).

        Cancelling it is safe; the line being read may then be lost.
        """
        line = await self._conn._aio(self._process.stdout.readline, what="read from remote process")
        if not line:
            return None
        return line.rstrip("\n")

    async def write(self, data: str) -> None:
        """Send ``data`` to the process's stdin (waits for flow control)."""

        async def _write() -> None:
            self._process.stdin.write(data)
            await self._process.stdin.drain()

        await self._conn._aio(_write, what="write to remote process")

    async def close_stdin(self) -> None:
        """Send EOF on the process's stdin. Idempotent."""

        async def _eof() -> None:
            if not self._process.stdin.is_closing():
                self._process.stdin.write_eof()

        try:
            await self._conn._aio(_eof, what="close stdin of remote process")
        except SshError:
            pass

    @property
    def exit_status(self) -> int | None:
        """The exit status once the remote side reported one (``-1`` if it died of a signal), else ``None``."""
        return self._process.exit_status

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the remote process exits; its exit status, or ``None`` if ``timeout`` passed first."""
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            await self._conn._aio(self._process.wait_closed, what="wait for remote process")
        return self._process.exit_status if self._process.exit_status is not None else None

    async def stop(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the remote process for good: EOF on stdin, SIGTERM over the channel, wait for it to exit, close
        the channel. Shielded from cancellation and bounded by ``timeout``; idempotent; never raises.
        (The wrapper escalates to SIGKILL on the worker; closing the channel also closes the wrapper's stdin.)
        """

        async def _stop() -> None:
            p = self._process
            if p.exit_status is None and p.exit_signal is None:
                try:
                    if not p.stdin.is_closing():
                        p.stdin.write_eof()
                    p.send_signal("TERM")
                except (OSError, asyncssh.Error, BrokenPipeError):
                    pass
            p.close()
            await p.wait_closed()

        with trio.move_on_after(timeout, shield=True):
            try:
                await call_asyncio(_stop)
            except Exception:  # noqa: BLE001  (the channel or connection is already gone: stopped is stopped)
                pass


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
        wrapped = " ".join(
            ["python3", "-c", shlex.quote(_WRAPPER), shlex.quote(f"{stop_grace:g}"), "sh", "-c", shlex.quote(command)]
        )

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
    "RemoteCommandFailed",
    "RemotePathNotFound",
    "RemoteProcess",
    "SshConnection",
    "SshError",
    "SshResult",
    "open_ssh_connection",
]
