"""One SSH connection per worker host, shared by every job placed there (asyncssh behind the asyncio bridge).

Everything here is Trio-facing: asyncssh is only ever awaited through :func:`cumulus.asyncio_bridge.call_asyncio`,
so callers need an open bridge (``async with open_asyncio_bridge():``). Host keys are always checked: against the
keys pinned for the host (a joined worker's, from its ``cumulus.host_key`` label), else a ``known_hosts`` file;
there is no way to turn that off.

This module owns the connection (:func:`open_ssh_connection`, :class:`SshConnection`: commands, files, health,
closing). Beside it, re-exported here: :mod:`cumulus.resources.ssh_process` (:class:`RemoteProcess`, a command
that never outlives its session) and :mod:`cumulus.resources.ssh_errors` (:class:`SshError` and kin,
:class:`SshResult`).

Every remote operation is bounded by a timeout, and none holds anything shared with another: each command, each
upload and each read has a session (channel) of its own, so a slow or stuck one (a job's FIFO, a stalled disk)
delays only itself. (OpenSSH's sftp-server answers one request at a time: one SFTP session shared by every job
would let one blocking ``open`` stall every other job's file operations.) Files that a job could have written are
read by :meth:`SshConnection.get_bytes` only: never through a symbolic link, only if regular, within a size limit.
"""

from __future__ import annotations

import math
import re
import shlex
import stat
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import asyncssh
import trio

from cumulus import metrics
from cumulus.asyncio_bridge import call_asyncio
from cumulus.resources.ssh_errors import (NotARegularFile, RemoteCommandFailed, RemoteFileRefused, RemoteFileTooLarge,
                                          RemotePathNotFound, SshError, SshResult)
from cumulus.resources.ssh_process import CLOSE_TIMEOUT, RemoteProcess, wrapped_command

T = TypeVar("T")

#: The bound of a remote command or file operation when the caller gives none.
DEFAULT_TIMEOUT = 60.0
#: File transfers get DEFAULT_TIMEOUT plus the time their bytes take at this rate.
MIN_TRANSFER_BYTES_PER_S = 1024 * 1024

# Runs on the worker: write the regular file argv[1] (at most argv[2] bytes) to stdout, race-free. The name is
# resolved once, without following a symbolic link and without opening what it names (O_PATH: a FIFO or a device is
# never opened, so nothing blocks and no driver runs); the checks are made on that handle, and the bytes are read
# through it (/proc/self/fd reopens the very inode the handle holds, whatever the name points to meanwhile).
# Exit 3: no such file; 4: not a regular file (stderr: its octal S_IFMT); 5: too large (stderr: its size);
# 6: not readable (stderr: why).
_READ_REGULAR_FILE = r"""
import errno, os, stat, sys
path, limit = sys.argv[1], int(sys.argv[2])
try:
    d = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    fd = os.open(os.path.basename(path), os.O_PATH | os.O_NOFOLLOW, dir_fd=d)
except OSError as e:
    sys.stderr.write(str(e))
    sys.exit(3 if e.errno == errno.ENOENT else 6)
st = os.fstat(fd)
if not stat.S_ISREG(st.st_mode):
    sys.stderr.write("%o" % stat.S_IFMT(st.st_mode))
    sys.exit(4)
if st.st_size > limit:
    sys.stderr.write(str(st.st_size))
    sys.exit(5)
try:
    f = os.open("/proc/self/fd/%d" % fd, os.O_RDONLY | os.O_NOCTTY)
except OSError as e:
    sys.stderr.write(str(e))
    sys.exit(6)
left, out = st.st_size, sys.stdout.buffer
while left > 0:
    b = os.read(f, min(left, 1 << 20))
    if not b:
        break
    out.write(b)
    left -= len(b)
out.flush()
"""
_FILE_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


class SshConnection:
    """One authenticated SSH connection to a worker host. Safe to use from many tasks at once."""

    def __init__(self, conn: Any, host: str, port: int) -> None:
        self._conn = conn
        self.host = host
        self.port = port

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def asyncssh_connection(self) -> Any:  # for channels of other kinds (cumulus.resources.instance_channel)
        return self._conn

    async def _aio(self, fn: Callable[..., Awaitable[T]], *args: Any, what: str, timeout: float | None = None,
                   command_timeout: float = 0.0, label: str = "", **kwargs: Any) -> T:
        """Await an asyncssh coroutine; asyncssh/OS errors become :class:`SshError`, and so does ``timeout``
        passing first (the coroutine is then cancelled: asyncssh closes what it had opened). ``command_timeout``:
        the timeout given to asyncssh itself, for the message when that one passes. Timed in
        ``cumulus_ssh_command_seconds`` under ``label`` (default: the first word of ``what``)."""
        m = metrics.current()
        with m.timing(m.ssh_command, label or what.split(" ", 1)[0]):
            return await self._aio_untimed(fn, *args, what=what, timeout=timeout, command_timeout=command_timeout,
                                           **kwargs)

    async def _aio_untimed(self, fn: Callable[..., Awaitable[T]], *args: Any, what: str, timeout: float | None,
                           command_timeout: float, **kwargs: Any) -> T:
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                return await call_asyncio(fn, *args, **kwargs)
            except (asyncssh.Error, OSError, EOFError) as exc:
                if isinstance(exc, asyncssh.SFTPNoSuchFile) or isinstance(exc, FileNotFoundError):
                    raise RemotePathNotFound(self.label, what, str(exc)) from exc
                if isinstance(exc, asyncssh.TimeoutError):
                    raise SshError(self.label, what, f"timed out after {command_timeout:g} s") from exc
                raise SshError(self.label, what, f"{type(exc).__name__}: {exc}") from exc
        assert scope.cancelled_caught
        raise SshError(self.label, what, f"no answer within {timeout:g} s")

    # ----------------------------------------------------------------------------------------------- commands
    async def run(self, command: str, *, timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> SshResult:
        """Run ``command`` (a shell command line, run by the user's login shell) to completion.

        Raises :class:`RemoteCommandFailed` on a non-zero status when ``check``; :class:`SshError` if the session
        cannot be opened or ``timeout`` passes (then the remote command is signalled and its channel closed).
        Cancellation closes the channel too (the remote command gets SIGTERM if it was still running).
        """

        async def _run() -> Any:
            return await self._conn.run(command, check=False, timeout=timeout)

        # asyncssh's timeout covers the command; the outer bound also covers opening its session.
        res = await self._aio(_run, what=f"run {command!r}", timeout=timeout + CLOSE_TIMEOUT, command_timeout=timeout,
                              label=f"run {command_name(command)}")
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
                process = await self._aio(_create, what=f"start {command!r}", label=f"start {command_name(command)}")
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
    async def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644, *,
                        timeout: float | None = None) -> None:
        """Write ``data`` to ``remote_path`` (replacing it) and set its mode, over an SFTP session of its own.
        Raises :class:`SshError`, also when ``timeout`` passes (default: :data:`DEFAULT_TIMEOUT` plus the time
        ``data`` takes at :data:`MIN_TRANSFER_BYTES_PER_S`)."""

        async def _put() -> None:
            async with self._conn.start_sftp_client() as sftp:
                async with sftp.open(remote_path, "wb") as f:
                    await f.write(data)
                await sftp.chmod(remote_path, mode)

        await self._aio(_put, what=f"write {remote_path}", timeout=_transfer_timeout(len(data), timeout))

    async def chmod(self, remote_path: str, mode: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Set ``remote_path``'s mode over an SFTP session of its own (no process on the worker). Raises
        :class:`SshError`, also when ``timeout`` passes."""

        async def _chmod() -> None:
            async with self._conn.start_sftp_client() as sftp:
                await sftp.chmod(remote_path, mode)

        await self._aio(_chmod, what=f"chmod {remote_path}", timeout=timeout)

    async def get_bytes(self, remote_path: str, max_bytes: int, *, timeout: float | None = None) -> bytes:
        """Read the whole of the regular file ``remote_path`` (an absolute path), race-free, in a session of its
        own: its last component is never followed if it is a symbolic link, and a FIFO, device, directory or
        socket is never opened.

        Raises :class:`RemotePathNotFound` if it does not exist, :class:`NotARegularFile` (``kind`` says what it
        is) if it is no regular file, :class:`RemoteFileTooLarge` if it holds more than ``max_bytes`` (then
        nothing is read), :class:`RemoteFileRefused` if it cannot be read, :class:`SshError` if the worker cannot
        be asked or ``timeout`` passes (default: :data:`DEFAULT_TIMEOUT` plus ``max_bytes`` at
        :data:`MIN_TRANSFER_BYTES_PER_S`). Cancellation closes its session.
        """
        if not remote_path.startswith("/"):
            raise ValueError(f"get_bytes needs an absolute path, got {remote_path!r}")
        limit = _transfer_timeout(max_bytes, timeout)
        command = " ".join(["python3", "-c", shlex.quote(_READ_REGULAR_FILE), shlex.quote(remote_path),
                            str(int(max_bytes))])

        async def _read() -> Any:
            return await self._conn.run(command, check=False, encoding=None, timeout=limit)

        res = await self._aio(_read, what=f"read {remote_path}", timeout=limit + CLOSE_TIMEOUT, command_timeout=limit)
        status, said = res.exit_status, _text(res.stderr).strip()
        stdout = res.stdout or b""
        if status == 0 and len(stdout) <= max_bytes:
            return bytes(stdout)
        if status == 3:
            raise RemotePathNotFound(self.label, f"read {remote_path}", said)
        if status == 4:
            kind = _FILE_KINDS.get(int(said, 8) if said.isdigit() else -1, f"of file type {said}")
            raise NotARegularFile(self.label, remote_path, kind)
        if status == 5 and said.isdigit():
            raise RemoteFileTooLarge(self.label, remote_path, int(said), max_bytes)
        if status == 6:
            raise RemoteFileRefused(self.label, remote_path, f"cannot be read: {said[-300:]}")
        raise SshError(self.label, f"read {remote_path}", f"reader exited with status {status}: {said[-300:]}")

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


def _transfer_timeout(size: int, timeout: float | None) -> float:
    return timeout if timeout is not None else DEFAULT_TIMEOUT + size / MIN_TRANSFER_BYTES_PER_S


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
    pinned_host_keys: Sequence[str] = (),
    connect_timeout: float = 10,
    keepalive_interval: float = 5,
    keepalive_count_max: int = 3,
) -> AsyncIterator[SshConnection]:
    """Connect to ``host:port`` as ``user`` with the private key at ``key_path``; the host key must be one of
    ``pinned_host_keys`` (OpenSSH public key lines) when given, else match ``known_hosts_path``. Yields an
    :class:`SshConnection`.

    Raises :class:`SshError` (host + reason: refused, timed out, host key not verifiable, auth failed) if the
    connection cannot be made within ``connect_timeout`` s. Keepalives detect a dead host after about
    ``keepalive_interval * keepalive_count_max`` s. Leaving the block closes the connection (shielded, bounded);
    every remote process still attached to it then sees stdin EOF and is stopped by its wrapper.
    """
    label = f"{host}:{port}"
    known_hosts: Any = known_hosts_path
    if pinned_host_keys:
        try:  # exactly these keys, for this connection: (trusted host keys, trusted CA keys, revoked keys)
            known_hosts = ([asyncssh.import_public_key(key) for key in pinned_host_keys], [], [])
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise SshError(label, "connect", f"the pinned host key does not parse: {exc}") from exc
    elif not known_hosts_path:
        raise SshError(label, "connect", "a pinned known_hosts file is required")

    async def _connect() -> Any:
        return await asyncssh.connect(
            host,
            port,
            username=user,
            client_keys=[key_path],
            known_hosts=known_hosts,
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
    except asyncssh.HostKeyNotVerifiable as exc:
        if not pinned_host_keys:
            raise SshError(label, "connect", f"{type(exc).__name__}: {exc}") from exc
        raise SshError(label, "connect", f"host key of {host} differs from the one pinned when it joined "
                                         f"({pinned_host_keys[0].split()[0]}); if the host was reinstalled, remove "
                                         f"the worker (`cumulus worker remove`) and join it again") from exc
    except (asyncssh.Error, OSError, ValueError) as exc:
        raise SshError(label, "connect", f"{type(exc).__name__}: {exc}") from exc
    conn = SshConnection(raw, host, port)
    try:
        yield conn
    finally:
        await conn.close()


def command_name(command: str) -> str:
    """A metric label for a shell command line: its program's name (``ls``, ``cumulus-partition-holder``), or
    ``script`` when it does not start with a plain one."""
    words = command.split(None, 1)
    name = words[0].rsplit("/", 1)[-1] if words else ""
    return name if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name) else "script"


__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MIN_TRANSFER_BYTES_PER_S",
    "NotARegularFile",
    "RemoteCommandFailed",
    "RemoteFileRefused",
    "RemoteFileTooLarge",
    "RemotePathNotFound",
    "RemoteProcess",
    "SshConnection",
    "SshError",
    "SshResult",
    "command_name",
    "open_ssh_connection",
]

