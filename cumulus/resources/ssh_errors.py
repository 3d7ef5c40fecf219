"""What SSH operations report: the :class:`SshError` family (every failure names its host and what was being
done) and :class:`SshResult` (what a finished remote command left; :class:`RemoteCommandFailed` carries one).

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


@dataclass(frozen=True)
class SshResult:
    """What a finished remote command left: exit status (``-1`` if killed by a signal), stdout and stderr text."""

    exit_status: int
    stdout: str
    stderr: str


__all__ = ["RemoteCommandFailed", "RemotePathNotFound", "SshError", "SshResult"]
