"""What SSH operations report: the :class:`SshError` family (every failure names its host and what was being
done; :class:`RemoteFileRefused` and its kinds say why a remote file was not read) and :class:`SshResult` (what a
finished remote command left; :class:`RemoteCommandFailed` carries one).

Shared by :mod:`cumulus.resources.ssh` and :mod:`cumulus.resources.ssh_process`, and re-exported by the former.
"""

from __future__ import annotations

from dataclasses import dataclass

from cumulus.errors import CumulusError


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


class RemoteFileRefused(SshError):
    """A remote file was not read because of what it is; ``problem`` says it without the host (``"is a FIFO, not a
    regular file"``), for a message about the file itself."""

    def __init__(self, host: str, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(host, f"read {path}", problem)


class NotARegularFile(RemoteFileRefused):
    """The path names a symbolic link, a FIFO, a directory, a device or a socket (``kind``: ``"a FIFO"``, ...);
    nothing was opened through it (a symbolic link is not followed, a FIFO or device never opened)."""

    def __init__(self, host: str, path: str, kind: str) -> None:
        self.kind = kind
        super().__init__(host, path, f"is {kind}, not a regular file")


class RemoteFileTooLarge(RemoteFileRefused):
    """The file holds ``size`` bytes, more than the ``limit`` it was read with; nothing of it was read."""

    def __init__(self, host: str, path: str, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(host, path, f"is {size} bytes, over the limit of {limit} bytes")


@dataclass(frozen=True)
class SshResult:
    """What a finished remote command left: exit status (``-1`` if killed by a signal), stdout and stderr text."""

    exit_status: int
    stdout: str
    stderr: str


__all__ = ["NotARegularFile", "RemoteCommandFailed", "RemoteFileRefused", "RemoteFileTooLarge", "RemotePathNotFound",
           "SshError", "SshResult"]
