"""Profile P3 (read-only: measures, changes nothing) with cProfile and print the top entries.

    python bench/profile_p3.py inmemory [--jobs N] [--workers W] [--concurrency C] [--top K] [--out FILE]
    python bench/profile_p3.py grpc     [--jobs N] [--workers W] [--concurrency C] [--top K] [--out FILE]

inmemory  ``control_plane.lifecycles_per_second`` (Python API, fake backends) in this process under cProfile.
grpc      the supervisor of ``grpc_throughput.serve_cumulus`` in a child process under cProfile (its main thread,
          where Trio and the trio-asyncio-hosted grpc.aio server run); this process drives it with
          ``grpc_throughput.lifecycles_per_second``; the child dumps its profile when its stdin closes.

Prints the lifecycles/s under the profiler (cProfile slows pure-Python code 1.5-3x, so read ratios, not rates),
the top functions by cumulative and by own time (with % of the profiled wall time), and the callers of the top
own-time entries. ``--out`` keeps the raw ``.prof`` (``python -m pstats FILE``, or snakeviz).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import signal
import pstats
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
TOP = 30


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_of(path: str) -> str:
    """A coarse owner of a function: the package (trio core, grpc, ...) or the project file."""
    if path.startswith("~") or path.startswith("<"):
        return "builtins/C (" + ("attrs-generated" if "attrs generated" in path else "C") + ")"
    parts = Path(path).parts
    for marker in ("site-packages", "lib-dynload"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1:]
            return "/".join(rest[:2]) if rest and rest[0] in ("trio", "grpc") else rest[0] if rest else path
    if "cumulus" in parts or "tests" in parts or "bench" in parts:
        top = next(p for p in ("cumulus", "tests", "bench") if p in parts)
        return "/".join(parts[parts.index(top):])
    return "stdlib/" + Path(path).name


class Sampler:
    """A stack sampler (what py-spy/pyinstrument would give; neither is installed): every ``interval`` s of CPU
    time of this process (``ITIMER_PROF``), a SIGPROF handler in the main thread records the main thread's stack
    (a running coroutine's frames chain up through the coroutines awaiting it to Trio's run loop, so the stack is
    the task's logical stack). Time spent in C (sqlite, protobuf, grpc's Cython) counts to its Python caller.
    CPU used by other threads (grpc's C-core) while the main thread waits shows as the main thread's wait. Much
    less overhead than cProfile, and inclusive (on-stack) % per function, which cProfile gets wrong for
    coroutines (each resume counts as a call). A thread-based sampler would be biased: it only gets the GIL
    where the main thread releases it (sqlite, epoll)."""

    def __init__(self, interval: float = 0.004) -> None:
        self.interval = interval
        self.stacks: dict[tuple, int] = {}
        self.samples = 0

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)

    def _sample(self, _signum: int, frame: Any) -> None:
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append((code.co_filename, code.co_firstlineno, code.co_name))
            frame = frame.f_back
        key = tuple(reversed(stack))
        self.stacks[key] = self.stacks.get(key, 0) + 1
        self.samples += 1

    def report(self, top: int, out: str | None = None) -> None:
        total = max(self.samples, 1)
        inclusive: dict[tuple, int] = {}
        own: dict[tuple, int] = {}
        groups: dict[str, int] = {}
        for stack, count in self.stacks.items():
            for func in set(stack):
                inclusive[func] = inclusive.get(func, 0) + count
            own[stack[-1]] = own.get(stack[-1], 0) + count
            groups[group_of(stack[-1][0])] = groups.get(group_of(stack[-1][0]), 0) + count
        idle = sum(c for s, c in self.stacks.items() if s[-1][2] in ("get_events", "_epoll_wait", "poll"))
        print(f"\nsampler: {self.samples} samples, one per {self.interval * 1000:g} ms of process CPU (about the "
              f"kernel tick; finer is not delivered); main thread in epoll (Trio waiting; the CPU is other threads') "
              f"in {100 * idle / total:.1f} %")
        print("\n-- sampled: where the main thread is (leaf frame) by package / file --")
        for name, count in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100 * count / total:6.1f} %  {name}")
        # Who is responsible: the innermost project frame (cumulus/, tests/fakes) of each sample, i.e. a project
        # function's own time plus the library code (Trio, json, sqlite, ...) it calls directly.
        here = str(ROOT) + "/"
        by_func: dict[Any, int] = {}
        by_file: dict[str, int] = {}
        for stack, count in self.stacks.items():
            key: Any = ("", 0, "<no project frame: Trio's scheduler / task switches, trio-asyncio's loop>")
            for path, line, name in reversed(stack):
                if path.startswith(here) and not path.endswith("profile_p3.py"):
                    key = (path, line, name)
                    break
            by_func[key] = by_func.get(key, 0) + count
            file = key[0][len(here):] if key[0] else key[2]
            by_file[file] = by_file.get(file, 0) + count
        for title, table in (("project file", by_file), ("project function", by_func)):
            print(f"\n-- sampled: by {title}, own time + the library code it calls directly --")
            for k, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
                label = k if isinstance(k, str) else (f"{k[2]} ({k[0][len(here):]}:{k[1]})" if k[0] else k[2])
                print(f"{100 * count / total:6.1f} %  {label}")
        for title, table in (("on stack (inclusive)", inclusive), ("leaf (own)", own)):
            print(f"\n-- sampled: top {top} functions {title}, % of samples --")
            for (path, line, name), count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
                print(f"{100 * count / total:6.1f} %  {name} ({group_of(path)}:{line})")
        if out:
            with open(out, "w") as f:  # folded stacks, for flamegraph.pl / speedscope
                for stack, count in self.stacks.items():
                    f.write(";".join(f"{n} ({Path(p).name}:{l})" for p, l, n in stack) + f" {count}\n")


def report(stats: pstats.Stats, wall: float, top: int, jobs: int) -> None:
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"profiled: {wall:.2f} s wall, {total:.2f} s in Python functions (own time, all entries)")
    groups: dict[str, float] = {}
    for (path, _line, _name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        groups[group_of(path)] = groups.get(group_of(path), 0.0) + tt
    print(f"\n-- own time by package / file (top {top}) --")
    for name, tt in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * tt / total:6.1f} %  {name}")

    def rows(key: str) -> None:
        entries = []
        for func, (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
            entries.append((ct if key == "cum" else tt, tt, ct, nc, func))
        entries.sort(reverse=True)
        print(f"\n-- top {top} by {'cumulative' if key == 'cum' else 'own'} time "
              f"(% of profiled own time {total:.2f} s) --")
        print(f"{'cum %':>6} {'own %':>6} {'calls':>9} {'/job':>6}  function")
        for _, tt, ct, nc, (path, line, name) in entries[:top]:
            where = f"{Path(path).name}:{line}" if line else path
            print(f"{100 * ct / total:6.1f} {100 * tt / total:6.1f} {nc:9d} {nc / jobs:6.1f}  {name} ({where})")

    rows("cum")
    rows("own")
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_callers(12)
    stats.stream = sys.stdout  # type: ignore[attr-defined]
    print("\n-- callers of the top own-time entries --")
    print("\n".join(line for line in out.getvalue().splitlines()[5:] if line.strip()))


def inmemory(args: argparse.Namespace) -> None:
    import trio

    import control_plane

    trio.run(control_plane.lifecycles_per_second, 100, args.workers, args.concurrency)  # warm-up, unprofiled
    if args.sample:
        sampler = Sampler()
        sampler.start()
        rate = trio.run(control_plane.lifecycles_per_second, args.jobs, args.workers, args.concurrency)
        sampler.stop()
        print(f"in-memory P3 under the sampler: {rate:.0f} lifecycles/s ({args.jobs} jobs, {args.workers} "
              f"workers, {args.concurrency} in flight)")
        sampler.report(args.top, args.out)
        return
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    rate = trio.run(control_plane.lifecycles_per_second, args.jobs, args.workers, args.concurrency)
    profiler.disable()
    wall = time.perf_counter() - started
    print(f"in-memory P3 under cProfile: {rate:.0f} lifecycles/s ({args.jobs} jobs, {args.workers} workers, "
          f"{args.concurrency} in flight)")
    if args.out:
        profiler.dump_stats(args.out)
    report(pstats.Stats(profiler), wall, args.top, args.jobs)


def serve_profiled(workers: int, out: str, sample: bool) -> None:
    """Child: the supervisor of grpc_throughput.serve_cumulus under cProfile, until stdin closes."""
    import trio

    from cumulus.app import open_supervisor
    from cumulus.config import load_settings
    from tests.credentials import security_overrides
    from tests.fakes import fake_cluster
    from tests.fakes.fake_cluster import FakeWorld, fake_node

    fake_cluster.DELAY = 0.0
    settings = load_settings(environ={}, overrides={
        "supervisor_id": "bench", "cluster.docker_host": "unix:///fake", "cluster.image": "sha256:fake",
        "cluster.poll_interval": 0.05, "journal.path": ":memory:", "jobs.max_queue": 1_000_000,
        "grpc.listen": "127.0.0.1:0", "server.http_listen": "", "logging.level": "WARNING", **security_overrides(),
    })
    profiler: Any = Sampler() if sample else cProfile.Profile()
    if sample:
        profiler.enable, profiler.disable = profiler.start, profiler.stop

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(i + 1, devices=8) for i in range(workers)], nursery)
            async with open_supervisor(settings, backends=world.backends(), serve_rpc=True) as sup:
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.01)
                print(f"LISTENING {sup.listen_address}", flush=True)
                await trio.to_thread.run_sync(sys.stdin.readline)  # "go": the warm-up is done
                profiler.enable()
                started = time.perf_counter()
                await trio.to_thread.run_sync(sys.stdin.readline)  # EOF or "stop"
                profiler.disable()
                print(f"WALL {time.perf_counter() - started}", flush=True)
                nursery.cancel_scope.cancel()

    trio.run(main)
    if sample:
        with open(out, "w") as f, contextlib.redirect_stdout(f):
            profiler.report(TOP, out + ".folded")
    else:
        profiler.dump_stats(out)
    print("DUMPED", flush=True)


def grpc_p3(args: argparse.Namespace) -> None:
    import grpc_throughput

    grpc_throughput.run_credentials()  # made here, inherited by the server process: both trust the same CA
    out = args.out or ("/tmp/p3-grpc-sampled.txt" if args.sample else "/tmp/p3-grpc.prof")
    proc = subprocess.Popen([sys.executable, __file__, "serve", "--workers", str(args.workers), "--out", out,
                             "--top", str(args.top)] + (["--sample"] if args.sample else []),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"profiled supervisor did not start: {line!r}")
        address = line.split()[1]
        grpc_throughput.lifecycles_per_second(address, 50, 10)  # warm-up, unprofiled
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.2)
        server_cpu, client_cpu, started = cpu_seconds(proc.pid), cpu_seconds(os.getpid()), time.perf_counter()
        rate = grpc_throughput.lifecycles_per_second(address, args.jobs, args.concurrency)
        elapsed = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(proc.pid) - server_cpu, cpu_seconds(os.getpid()) - client_cpu
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        wall = float(proc.stdout.readline().split()[1])
        done = threading.Event()
        threading.Thread(target=lambda: (proc.stdout.readline(), done.set()), daemon=True).start()
        if not done.wait(60):
            raise RuntimeError("profiled supervisor did not dump its profile")
    finally:
        proc.kill()
        proc.wait(10)
    print(f"gRPC P3, supervisor under {'the sampler' if args.sample else 'cProfile'}: {rate:.0f} lifecycles/s "
          f"({args.jobs} jobs, {args.workers} workers, {args.concurrency} concurrent streams)")
    print(f"CPU during the timed run ({elapsed:.1f} s): supervisor process {server_cpu:.1f} s "
          f"({100 * server_cpu / elapsed:.0f} % of one core), client process {client_cpu:.1f} s "
          f"({100 * client_cpu / elapsed:.0f} %); machine load {open('/proc/loadavg').read().split()[0]}")
    if args.sample:
        print(Path(out).read_text())
        return
    report(pstats.Stats(out), wall, args.top, args.jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["inmemory", "grpc", "serve"])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=None, help="default 64 (inmemory), 100 (grpc)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", default=None, help="keep the raw profile here (with --sample: folded stacks)")
    parser.add_argument("--sample", action="store_true", help="a stack sampler instead of cProfile")
    args = parser.parse_args()
    if args.what == "serve":
        global TOP
        TOP = args.top
        serve_profiled(args.workers, args.out, args.sample)
        return
    if args.concurrency is None:
        args.concurrency = 64 if args.what == "inmemory" else 100
    (inmemory if args.what == "inmemory" else grpc_p3)(args)


if __name__ == "__main__":
    main()
