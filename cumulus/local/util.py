"""Small helpers: running commands, progress lines, pids, mounts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence


class LocalClusterError(RuntimeError):
    pass


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


class Progress:
    """Prints each step and its duration to stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        info: dict = {"note": ""}
        start = time.monotonic()
        try:
            yield info
        except Exception:
            self.log(f"{name}: FAILED after {time.monotonic() - start:.2f}s")
            raise
        note = f" ({info['note']})" if info.get("note") else ""
        self.log(f"{name}: {time.monotonic() - start:.2f}s{note}")


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
