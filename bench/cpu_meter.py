"""Where the machine's CPU goes during a timed window (P7's CPU line, ``burst.py``): per process of interest
(the supervisor, this client, each node's dockerd), the job containers by their node's cpuacct cgroup, and the
rest by kind from a sweep of /proc. Linux only; read-only (it only reads /proc and /sys)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
CGROUPS = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1 here; the containers of node cw<i> are under cumulus-cw<i>


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of process ``pid`` (all its threads), from /proc/<pid>/stat; None if it is not there."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / TICK, total / TICK


def supervisor_pid(address: str) -> int | None:
    """The local cluster's supervisor, if ``address`` is its address (its pid file, /proc as a fallback)."""
    try:
        from cumulus.local import supervisor as local_supervisor

        info = local_supervisor.read_info() or {}
        pid = local_supervisor.running_pid()
        if pid and info.get("address", local_supervisor.ADDRESS) == address:
            return pid
    except Exception as error:  # noqa: BLE001 - only a measurement: say so and go on
        print(f"  note: supervisor pid not found ({type(error).__name__}: {error})", file=sys.stderr)
    return None


class CpuMeter:
    """Where the machine's CPU went during a timed window, as shares of one core (0.5 = 50 % of one core).

    The supervisor, this client and each node's dockerd are read from /proc/<pid>/stat at the window's ends. The
    job containers of each worker (the runner or ``python3 -c``, docker-init) from their node's cpuacct cgroup
    (``cumulus-cw<i>``: exited containers stay counted). Everything else by a sweep of /proc every
    ``interval`` s in a background thread, by kind (partition holders, sshd, containerd and shims, other
    processes, e.g. other test runs on the machine); a process that lives less than ``interval`` is missed there
    and counts as "unaccounted" (machine busy minus the rest). The sweep costs about 1 % of a core.
    """

    def __init__(self, supervisor: int | None, nodes: list[dict], interval: float = 1.0) -> None:
        self.fixed: dict[str, int] = {"client (this process)": os.getpid()}
        if supervisor:
            self.fixed["supervisor"] = supervisor
        for node in nodes:
            try:
                self.fixed[f"dockerd {node['name']}"] = int(Path(node["docker_pidfile"]).read_text())
            except (OSError, ValueError, KeyError):
                pass
        self.cgroups = {f"job containers {n['name']}": CGROUPS / f"cumulus-{n['name']}" / "cpuacct.usage"
                        for n in nodes if n["role"] == "worker"}
        self.interval = interval
        self._kinds: dict[int, str | None] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _kind(self, pid: int) -> str | None:
        """What a process is (None: counted otherwise: fixed pids, job containers)."""
        if pid in self._kinds:
            return self._kinds[pid]
        kind: str | None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return None
        if pid in self.fixed.values() or "cumulus-cw" in cgroup:
            kind = None
        elif not cmdline:
            kind = "kernel threads"
        elif b"partition-holder" in cmdline or b"chronos" in cmdline:
            kind = "partition holders (+ chronos)"
        elif b"sshd" in cmdline:
            kind = "sshd (supervisor sessions)"
        elif b"containerd" in cmdline or b"runc" in cmdline:
            kind = "containerd, shims, runc"
        else:
            kind = "other processes (e.g. other test runs)"
        self._kinds[pid] = kind
        return kind

    def _sweep(self, first: bool) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if self._kind(pid) is None:
                continue
            value = cpu_seconds(pid)
            if value is None:
                continue
            if pid not in self._first:
                self._first[pid] = value if first else 0.0  # seen first after the start: it began in the window
            self._last[pid] = value

    def _cgroup_seconds(self) -> dict[str, float]:
        out = {}
        for name, path in self.cgroups.items():
            try:
                out[name] = int(path.read_text()) / 1e9
            except (OSError, ValueError):
                pass
        return out

    def start(self) -> None:
        self._kinds.clear()
        self._first.clear()
        self._last.clear()
        self._fixed0 = {name: cpu_seconds(pid) for name, pid in self.fixed.items()}
        self._cg0 = self._cgroup_seconds()
        self._sweep(first=True)
        self._busy0 = machine_busy()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self._sweep(first=False)

        self._thread = threading.Thread(target=loop, name="cpu-sweep", daemon=True)
        self._thread.start()

    def stop(self, elapsed: float) -> dict[str, float]:
        busy1 = machine_busy()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sweep(first=False)
        seconds: dict[str, float] = {}
        for name, pid in self.fixed.items():
            after, before = cpu_seconds(pid), self._fixed0.get(name)
            if after is not None and before is not None:
                seconds[name] = after - before
        cg1 = self._cgroup_seconds()
        for name, before in self._cg0.items():
            if name in cg1:
                seconds[name] = cg1[name] - before
        for pid, first in self._first.items():
            kind = self._kinds.get(pid)
            if kind is not None:
                seconds[kind] = seconds.get(kind, 0.0) + self._last[pid] - first
        busy = busy1[0] - self._busy0[0]
        seconds["unaccounted (short-lived processes)"] = max(0.0, busy - sum(seconds.values()))
        shares = {name: value / elapsed for name, value in seconds.items() if elapsed > 0}
        shares["machine busy (all cores)"] = busy / elapsed if elapsed > 0 else 0.0
        return shares
