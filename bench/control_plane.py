"""Control-plane benchmarks on in-memory backends (no Docker, no SSH): what the supervisor itself costs.

    python bench/control_plane.py [--quick]

* P3 with metrics on against P3 with metrics off (``metrics.enabled``): what counting costs (goal: under 5 %).
* P3 throughput: complete job lifecycles per second (submit -> placed -> partition -> files -> service ->
  exit -> result -> teardown) driven through the real supervisor tree by its Python API, with instant in-memory
  backends. Baseline: a raw Trio loop
  doing the same number of task spawns and channel round trips per job (the least any Trio design must pay).
* P5 memory: supervisor RSS growth per live job with 10 / 100 / 1000 concurrent jobs (goal <= 100 KB/job).
* Scaling: P3 at 1 / 10 / 100 simulated workers and at 10 / 100 / 1,000 concurrent jobs; P5 at 10 / 100 / 1,000
  live jobs (10 workers) and at 1,000 live jobs on 1 and 100 workers. (P3 over real gRPC: bench/grpc_throughput.py.)

The in-memory backends are the unit-test fakes (tests/fakes) with their delays set to zero.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cumulus.app import open_supervisor  # noqa: E402
from cumulus.config import load_settings  # noqa: E402
from cumulus.jobs import JobSpec  # noqa: E402
from tests.fakes import fake_cluster  # noqa: E402
from tests.fakes.fake_cluster import FakeWorld, fake_node  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settings(metrics: bool = True):
    return load_settings(environ={}, overrides={
        "supervisor_id": "bench", "cluster.docker_host": "unix:///fake", "cluster.image": "sha256:fake",
        "cluster.poll_interval": 0.05, "journal.path": ":memory:", "jobs.max_queue": 1_000_000,
        "lease.renew_interval": 5, "lease.ttl": 30, "metrics.enabled": metrics,
        "jobs.max_jobs_per_device": 100,  # P5's 1,000 live jobs on a single worker (16 devices) must all run
    })


async def _with_cluster(workers: int, body, metrics: bool = True):
    fake_cluster.DELAY = 0.0
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(i + 1, devices=16) for i in range(workers)], nursery)
        async with open_supervisor(settings(metrics), backends=world.backends(), serve_rpc=False) as sup:
            while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                await trio.sleep(0.01)
            result = await body(sup)
        nursery.cancel_scope.cancel()
    return result


async def lifecycles_per_second(jobs: int, workers: int, concurrency: int = 64, metrics: bool = True) -> float:
    async def body(sup):
        started = time.perf_counter()
        limiter = trio.Semaphore(concurrency)

        async def one():
            async with limiter:
                record = await sup.submit(JobSpec(package=b"zip", gpu=0.125, env={"FAKE_RUNTIME": "0"}))
                await record.torn_down.wait()

        async with trio.open_nursery() as nursery:
            for _ in range(jobs):
                nursery.start_soon(one)
        return jobs / (time.perf_counter() - started)

    return await _with_cluster(workers, body, metrics)


def metrics_cost(rounds: int, jobs: int) -> dict:
    """P3 with metrics on against P3 with them off (the baseline), rounds interleaved so that both see the same
    machine."""
    on, off = [], []
    for _ in range(rounds):
        off.append(trio.run(lifecycles_per_second, jobs, 10, 64, False))
        on.append(trio.run(lifecycles_per_second, jobs, 10, 64, True))
    with_metrics, without = statistics.median(on), statistics.median(off)
    print(f"P3 lifecycles/s with metrics on: {with_metrics:8.0f}   off: {without:8.0f}   "
          f"ratio {with_metrics / without:.3f} (goal >= 0.95)")
    return {"metric": "P3 job lifecycles/s, metrics on (baseline: metrics off), issue 14", "cumulus": with_metrics,
            "baseline": without, "ratio": with_metrics / without, "goal": ">= 0.95x", "unit": "1/s"}


async def raw_trio_per_second(jobs: int, concurrency: int = 64) -> float:
    """Baseline: per job, a spawned task with 6 request/reply round trips over memory channels."""
    async def server(receive):
        async for message, reply in receive:
            reply.send_nowait(message)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel(1024)
        nursery.start_soon(server, receive)
        limiter = trio.Semaphore(concurrency)

        async def one():
            async with limiter:
                for step in range(6):
                    reply_send, reply_receive = trio.open_memory_channel(1)
                    await send.send((step, reply_send))
                    await reply_receive.receive()

        async with trio.open_nursery() as jobs_nursery:
            for _ in range(jobs):
                jobs_nursery.start_soon(one)
        nursery.cancel_scope.cancel()
    return jobs / (time.perf_counter() - started)


async def memory_per_job(jobs: int, workers: int) -> tuple[float, float]:
    """(RSS growth, Python heap growth) per live job, in bytes, with ``jobs`` jobs RUNNING at once.

    RSS grows in whole pages and allocator arenas, so with few jobs it can read 0; the heap figure (tracemalloc,
    every Python allocation the jobs keep alive) is exact at any count."""
    async def body(sup):
        gc.collect()
        before = rss_bytes()
        tracemalloc.start()
        heap_before = tracemalloc.get_traced_memory()[0]
        records = [await sup.submit(JobSpec(package=b"zip", gpu=0.001, env={"FAKE_RUNTIME": "1000"}))
                   for _ in range(jobs)]
        while sum(r.state.value == "RUNNING" for r in records) < jobs:
            await trio.sleep(0.05)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - heap_before
        tracemalloc.stop()
        return (rss_bytes() - before) / jobs, heap / jobs

    return await _with_cluster(workers, body)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs and rounds")
    parser.add_argument("--metrics-cost", action="store_true", help="only P3 with metrics on vs off")
    args = parser.parse_args(argv)
    rounds, jobs = (3, 500) if args.quick else (5, 2000)
    if args.metrics_cost:
        return [metrics_cost(rounds * 2 + 1, jobs)]
    results = []
    api, raw = [], []
    for _ in range(rounds):
        api.append(trio.run(lifecycles_per_second, jobs, 10))
        raw.append(trio.run(raw_trio_per_second, jobs))
    cumulus, baseline = statistics.median(api), statistics.median(raw)
    print(f"P3 lifecycles/s (Python API, 10 workers): {cumulus:8.0f}   raw Trio: {baseline:8.0f}   "
          f"ratio {cumulus / baseline:.3f} (goal >= 1,000/s)")
    results.append({"metric": "P3 job lifecycles/s, Python API, in-memory backends", "cumulus": cumulus,
                    "baseline": baseline, "ratio": cumulus / baseline, "goal": ">= 1000/s", "unit": "1/s"})
    results.append(metrics_cost(rounds, jobs))
    for workers in (1, 10, 100):
        rate = trio.run(lifecycles_per_second, jobs // 2, workers)
        print(f"  scaling: {workers:3d} workers: {rate:8.0f} lifecycles/s")
        results.append({"metric": f"P3 scaling, {workers} workers", "cumulus": rate, "baseline": baseline,
                        "ratio": rate / baseline, "goal": ">= 1000/s", "unit": "1/s"})
    for concurrency in (10, 100, 1000):
        rate = trio.run(lifecycles_per_second, jobs, 10, concurrency)
        print(f"  scaling: {concurrency:4d} concurrent jobs: {rate:8.0f} lifecycles/s")
        results.append({"metric": f"P3 scaling, {concurrency} concurrent jobs, 10 workers", "cumulus": rate,
                        "baseline": baseline, "ratio": rate / baseline, "goal": ">= 1000/s", "unit": "1/s"})
    for count in (10, 100, 1000):
        rss, heap = trio.run(memory_per_job, count, 10)
        print(f"P5 memory per live job at {count:4d} jobs: RSS {rss / 1024:7.1f} KB, Python heap {heap / 1024:7.1f} KB "
              "(goal <= 100 KB)")
        for what, value in (("RSS", rss), ("Python heap (tracemalloc)", heap)):
            results.append({"metric": f"P5 {what} per live job, {count} jobs", "cumulus": value / 1024,
                            "baseline": 100.0, "ratio": value / 1024 / 100.0, "goal": "<= 100 KB/job",
                            "unit": "KB"})
    for workers in (1, 100):
        rss, heap = trio.run(memory_per_job, 1000, workers)
        print(f"P5 memory per live job at 1000 jobs, {workers:3d} workers: RSS {rss / 1024:7.1f} KB, "
              f"Python heap {heap / 1024:7.1f} KB")
        for what, value in (("RSS", rss), ("Python heap (tracemalloc)", heap)):
            results.append({"metric": f"P5 {what} per live job, 1000 jobs, {workers} workers",
                            "cumulus": value / 1024, "baseline": 100.0, "ratio": value / 1024 / 100.0,
                            "goal": "<= 100 KB/job", "unit": "KB"})
    return results


if __name__ == "__main__":
    main()
