"""A command running on a worker inside one SSH session: :class:`RemoteProcess` (Trio-facing), and the small
wrapper it runs under on the worker (:func:`wrapped_command`).

The wrapper (``python3``) forwards stdin to the command and stops the command's whole process group when stdin
reaches EOF (the session or the whole connection closed) or when the wrapper gets SIGTERM/SIGHUP/SIGINT (the
channel's ``signal`` request, which OpenSSH >= 7.8 honours for non-pty sessions: verified on OpenSSH 9.2). So a
remote process never outlives its session, even when the supervisor dies without saying goodbye.

Started by :meth:`cumulus.resources.ssh.SshConnection.open_process`; re-exported by :mod:`cumulus.resources.ssh`.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

import asyncssh
import trio

from cumulus.asyncio_bridge import call_asyncio
from cumulus.resources.ssh_errors import SshError

if TYPE_CHECKING:
    from cumulus.resources.ssh import SshConnection

#: How long a shielded close (of a process or the connection) may take before it is abandoned.
CLOSE_TIMEOUT = 5.0

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


def wrapped_command(command: str, stop_grace: float) -> str:
    """The command line that runs ``command`` (a shell command line) under the wrapper, which stops its process
    group ``stop_grace`` s after SIGTERM (SIGKILL) once its stdin ends or it is signalled."""
    return " ".join(
        ["python3", "-c", shlex.quote(_WRAPPER), shlex.quote(f"{stop_grace:g}"), "sh", "-c", shlex.quote(command)]
    )


class RemoteProcess:
    """A command running on the worker inside one SSH session. Use through :meth:`SshConnection.open_process`."""

    def __init__(self, conn: "SshConnection", process: Any, command: str) -> None:
        self._conn = conn
        self._process = process
        self.command = command

    async def readline(self) -> str | None:
        """The next stdout line without its newline, or ``None`` at EOF (the process closed stdout / exited).

        Waits as long as the process is silent (a long-running process speaks when it has something to say):
        callers that expect a line bound the wait themselves (``trio.fail_after``); a dead host ends it with
        :class:`SshError` once the connection's keepalives go unanswered. Cancelling it is safe; the line being
        read may then be lost.
        """
        line = await self._conn._aio(self._process.stdout.readline, what="read from remote process")
        if not line:
            return None
        return line.rstrip("\n")

    async def write(self, data: str, *, timeout: float = CLOSE_TIMEOUT * 6) -> None:
        """Send ``data`` to the process's stdin (waits for flow control). Raises :class:`SshError`, also when the
        process has not taken it within ``timeout`` s."""

        async def _write() -> None:
            self._process.stdin.write(data)
            await self._process.stdin.drain()

        await self._conn._aio(_write, what="write to remote process", timeout=timeout)

    async def close_stdin(self) -> None:
        """Send EOF on the process's stdin. Idempotent."""

        async def _eof() -> None:
            if not self._process.stdin.is_closing():
                self._process.stdin.write_eof()

        try:
            await self._conn._aio(_eof, what="close stdin of remote process", timeout=CLOSE_TIMEOUT)
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


__all__ = ["CLOSE_TIMEOUT", "RemoteProcess", "wrapped_command"]
