"""Small helpers: finding and running commands, progress lines, pids, mounts, removal that never crosses a mount."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from cumulus.errors import CumulusError


class LocalClusterError(CumulusError):
    """``cumulus local`` could not do what it was asked (a command failed, a daemon did not come up, a mount is
    in the way); the message says what and where."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise LocalClusterError("the local cluster needs root (network namespaces, dockerd, sshd): run it as root, "
                                "or with sudo")


def run(cmd: Sequence[str], *, check: bool = True, input: str | bytes | None = None, timeout: float = 600,
        env: dict[str, str] | None = None, capture: bool = True) -> subprocess.CompletedProcess:
    """Run a command; on failure raise LocalClusterError with its stderr."""
    text = not isinstance(input, bytes)
    proc = subprocess.run(list(cmd), input=input, capture_output=capture, text=text, timeout=timeout,
                          env={**os.environ, **env} if env else None)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "") if capture else ""
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        raise LocalClusterError(f"command failed (rc={proc.returncode}): {' '.join(map(str, cmd))}\n{err.strip()}")
    return proc


# Debian keeps daemons in sbin, which a non-login root shell may not have on PATH.
_SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def binary(name: str, *, prefer: Sequence[str] = ()) -> str:
    """The absolute path of command ``name``, looked up now (not at import: the packages step may install it).

    ``prefer``: paths tried first (e.g. the distribution's client matching its daemon). Raises LocalClusterError
    saying which package provides it when it is nowhere.
    """
    for path in prefer:
        if os.access(path, os.X_OK):
            return path
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SYSTEM_PATH])
    found = shutil.which(name, path=search)
    if not found:
        raise LocalClusterError(f"{name} not found on PATH or in {', '.join(_SYSTEM_PATH)}; `cumulus local up` "
                                f"installs it (package {PROVIDED_BY.get(name, name)})")
    return found


PROVIDED_BY = {"dockerd": "docker.io", "docker": "docker.io", "sshd": "openssh-server", "debootstrap": "debootstrap",
               "ssh-keygen": "openssh-client", "nsenter": "util-linux", "unshare": "util-linux", "ip": "iproute2"}


class Progress:
    """Prints each step to stderr when it starts and when it ends (with its duration), and, for long steps, the
    latest line of what they are doing (at most one every ``detail_every`` seconds)."""

    def __init__(self, quiet: bool = False, detail_every: float = 3.0) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.detail_every = detail_every
        self._last_detail = 0.0

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def detail(self, label: str) -> Callable[[str], None]:
        """A line callback for a long command: shows its progress as ``label: <line>``, throttled."""

        def show(line: str) -> None:
            now = time.monotonic()
            line = line.strip()
            if line and now - self._last_detail >= self.detail_every:
                self._last_detail = now
                self.log(f"  {label}: {line[:150]}")

        return show

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        info: dict = {"note": ""}
        start = time.monotonic()
        self.log(f"{name} ...")
        try:
            yield info
        except BaseException as exc:
            how = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
            self.log(f"{name}: {how} after {time.monotonic() - start:.2f}s")
            raise
        note = f" ({info['note']})" if info.get("note") else ""
        self.log(f"{name}: done in {time.monotonic() - start:.2f}s{note}")


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pid_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def kill_pids(pids: list[int], sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    """Send sig, wait up to `wait` seconds, then SIGKILL the survivors."""
    pids = [p for p in pids if pid_alive(p)]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for p in pids:
        if pid_alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)


def mounts_under(prefix: Path | str) -> list[str]:
    """Mount points at or below prefix, deepest first (so they can be unmounted in order)."""
    prefix = str(prefix).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return sorted(set(found), key=lambda m: (-m.count("/"), m))


def unmount_under(prefix: Path | str) -> int:
    n = 0
    for _ in range(5):
        mps = mounts_under(prefix)
        if not mps:
            break
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
            n += 1
    return n


def remove_tree(path: Path | str) -> None:
    """Delete ``path`` recursively without ever crossing a mount point.

    Mounts at or below it are unmounted first; if one cannot be, nothing is deleted and LocalClusterError says
    which. The delete itself (``rm --one-file-system``) also stops at any other file system it meets.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    left = mounts_under(path)
    if left:
        raise LocalClusterError(f"not deleting {path}: still mounted there: {', '.join(left)}")
    proc = subprocess.run(["rm", "-rf", "--one-file-system", "--preserve-root=all", "--", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or path.exists():
        raise LocalClusterError(f"could not delete {path}: {proc.stderr.strip()[-800:]}")
