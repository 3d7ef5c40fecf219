"""The transient processes of one ``cumulus local up`` (apt, debootstrap, docker builds, setup-worker.sh, ...).

Each runs in its own process group, marked in its environment with this run's id (inherited by every
descendant, chroots included), and is stopped with its caller:
- the caller raising (Ctrl-C included) while it waits kills the child's whole group (:func:`run`);
- :func:`stop_all` kills every live child of this run (a step running in a background thread, when the
  foreground fails);
- the caller being SIGKILLed kills the direct child (``PR_SET_PDEATHSIG``); whatever it had started itself
  is found by its mark and stopped by the next run (:func:`stop_leftovers`), which holds the run lock first,
  so a mark of another run id always belongs to a dead run.

Daemons the cluster keeps (dockerd, sshd, the supervisor) are not started through here.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import threading
import uuid
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from cumulus.local.util import LocalClusterError, kill_pids

MARK = "CUMULUS_LOCAL_RUN"
RUN_ID = uuid.uuid4().hex[:12]
LOCK_PATH = Path(os.environ.get("CUMULUS_LOCAL_LOCK", "/run/cumulus-local.lock"))
_PR_SET_PDEATHSIG = 1

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


def run(cmd: Sequence[str], *, timeout: float = 600, env: dict[str, str] | None = None,
        on_line: Callable[[str], None] | None = None, stdin: IO[bytes] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a transient command to completion; returns its output (stdout and stderr merged, as text).

    ``on_line`` receives each output line as it arrives (progress of long steps). Raises LocalClusterError on
    a non-zero exit (with ``check``) or past ``timeout``. If the caller is interrupted meanwhile (any
    BaseException, KeyboardInterrupt included), the command's whole process group is killed first.
    """
    full_env = {**os.environ, **(env or {}), MARK: RUN_ID}
    with _live_lock:
        if _stopping.is_set():
            raise LocalClusterError(f"not starting {cmd[0]}: this run is stopping")
        proc = subprocess.Popen(list(cmd), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True, preexec_fn=_die_with_parent)
        _live.add(proc)
    lines: list[str] = []
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill_group(proc, 1.0)

    timer = threading.Timer(timeout, on_timeout)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)
        proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        timer.cancel()
        with _live_lock:
            _live.discard(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    output = "\n".join(lines)
    if timed_out.is_set() or (check and proc.returncode != 0):
        why = f"timed out after {timeout:.0f}s" if timed_out.is_set() else f"rc={proc.returncode}"
        raise LocalClusterError(f"command failed ({why}): {' '.join(map(str, cmd))}\n{output[-4000:].strip()}")
    return subprocess.CompletedProcess(list(cmd), proc.returncode, output, "")


def stop_all() -> int:
    """Kill every live transient child of this run (and its group), and start no new one. Returns how many
    were killed."""
    with _live_lock:
        _stopping.set()
        procs = list(_live)
    for proc in procs:
        _kill_group(proc, grace=2.0)
    return len(procs)


def _marked_pids() -> dict[int, str]:
    """pid -> run id of every process carrying a run mark (except this process)."""
    found: dict[int, str] = {}
    needle = MARK.encode() + b"="
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle):
                found[int(entry)] = var[len(needle):].decode(errors="replace")
                break
    return found


def stop_leftovers() -> int:
    """Kill what an interrupted earlier run left running. Call with the run lock held."""
    pids = [pid for pid, run_id in _marked_pids().items() if run_id != RUN_ID]
    kill_pids(pids, signal.SIGKILL, wait=5)
    return len(pids)


def processes_rooted_under(path: Path) -> list[int]:
    """Processes whose root directory is at or below ``path`` (chrooted there, e.g. by debootstrap)."""
    prefix = str(path).rstrip("/")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                root = os.readlink(f"/proc/{entry}/root")
                if root == prefix or root.startswith(prefix + "/"):
                    pids.append(int(entry))
    return pids


@contextlib.contextmanager
def run_lock(what: str, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the machine-wide lock of ``cumulus local up/down``; waits (saying so) while another holds it."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            on_wait(f"waiting for {holder} to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"cumulus local {what} (pid {os.getpid()})\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()

