"""The dashboard's jobs page with 10,000 jobs in the supervisor, against the plainest way to get the same page of
jobs today: the ListJobs RPC over gRPC on the same supervisor.

    python bench/dashboard.py [--jobs N] [--rounds R]

A supervisor process (``open_supervisor`` with the unit-test fakes as backends, delays zero; TLS and tokens, as by
default) runs N trivial jobs to completion through its Python API (4 users), then serves gRPC and its HTTP port on
loopback. This process, signed in as the admin, times (medians over R rounds, the sides alternating):

* dashboard: ``GET /jobs?per_page=50`` (the newest 50 of all N, rendered as HTML), also page 100 (deep) and with a
  name filter;
* baseline: ``ListJobs(include_finished=True, limit=50)`` (the newest 50 as protobuf: what ``cumulus jobs`` asks
  for), and ``ListJobs`` of all N sliced to 50 here (what a client must do for any page but the newest).

Both go over TLS to the same process, one request at a time, from the same client process; each side's first
request is a warm-up. The ratio is dashboard / baseline (lower is better; the goal: at most a few times the bare
RPC, since the page also filters, orders and renders).
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from cumulus.rpc.generated.v1 import cumulus_pb2 as pb  # noqa: E402
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc  # noqa: E402
from tests.credentials import run_credentials, security_overrides  # noqa: E402

USERS = ("ana", "ben", "cai", "dee")


def serve(jobs: int) -> None:
    """The supervisor with N finished jobs, serving gRPC and HTTP on free loopback ports (printed), until killed."""
    import trio

    from cumulus.app import open_supervisor
    from cumulus.config import load_settings
    from cumulus.identity import Caller
    from cumulus.jobs import JobSpec
    from tests.fakes import fake_cluster
    from tests.fakes.fake_cluster import FakeWorld, fake_node

    fake_cluster.DELAY = 0.0
    settings = load_settings(environ={}, overrides={
        "supervisor_id": "bench", "cluster.docker_host": "unix:///fake", "cluster.image": "sha256:fake",
        "cluster.poll_interval": 0.05, "journal.path": ":memory:", "jobs.max_queue": 1_000_000,
        "grpc.listen": "127.0.0.1:0", "server.http_listen": "127.0.0.1:0", "logging.level": "WARNING",
        **security_overrides(),
    })

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(i + 1, devices=8) for i in range(4)], nursery)
            async with open_supervisor(settings, backends=world.backends(), serve_rpc=True) as sup:
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.01)
                limiter = trio.Semaphore(64)
                started = time.perf_counter()

                async def one(i: int) -> None:
                    async with limiter:
                        record = await sup.submit(JobSpec(package=b"zip", gpu=0.125, name=f"sweep-{i % 10}",
                                                          env={"FAKE_RUNTIME": "0"}),
                                                  caller=Caller(USERS[i % len(USERS)]))
                        await record.torn_down.wait()

                async with trio.open_nursery() as submitting:
                    for i in range(jobs):
                        submitting.start_soon(one, i)
                print(f"# {jobs} jobs ran in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
                print(f"LISTENING {sup.listen_address} {sup.http_address}", flush=True)
                await trio.sleep_forever()

    trio.run(main)


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    call()  # warm-up
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return []
    import httpx

    creds = run_credentials()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(args.jobs)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("LISTENING "):
            raise SystemExit(f"the supervisor did not start: {line!r}")
        grpc_address, http_url = line.split()[1:3]
        channel = grpc.secure_channel(grpc_address, grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(creds.ca.read_bytes()), grpc.access_token_call_credentials(creds.admin_token)))
        stub = cumulus_pb2_grpc.OrchestratorServiceStub(channel)
        client = httpx.Client(base_url=http_url, verify=ssl.create_default_context(cafile=str(creds.ca)), timeout=60)
        signed = client.post("/login", data={"token": creds.admin_token})
        assert signed.status_code == 303, signed.text

        def page(query: str) -> Callable[[], object]:
            def get() -> object:
                reply = client.get("/jobs?" + query)
                assert reply.status_code == 200 and 'id="job-count">' in reply.text
                return reply
            return get

        def list_jobs(limit: int) -> Callable[[], object]:
            def call() -> object:
                reply = stub.ListJobs(pb.ListJobsRequest(include_finished=True, limit=limit), timeout=60)
                newest = sorted(reply.jobs, key=lambda j: (j.submitted_at.ToNanoseconds(), j.job_id), reverse=True)
                return newest[:50]
            return call

        total = len(stub.ListJobs(pb.ListJobsRequest(include_finished=True), timeout=60).jobs)
        assert total == args.jobs, total
        sides = {"dashboard /jobs page 1": page("per_page=50"), "dashboard /jobs page 100": page("per_page=50&page=100"),
                 "dashboard /jobs name filter": page("per_page=50&name=sweep-3"),
                 "ListJobs limit=50": list_jobs(50), f"ListJobs all {args.jobs}, sliced": list_jobs(0)}
        samples: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds // 5 or 1):  # alternate in blocks, so noise hits every side alike
            for name, call in sides.items():
                samples[name] += timed(call, 5)
        medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
        print(f"jobs page with {args.jobs} jobs in the supervisor (medians of {len(samples['ListJobs limit=50'])} "
              "requests, ms):")
        for name, value in medians.items():
            print(f"  {name:36s} {value:8.2f} ms")
        rows = []
        for dash in ("dashboard /jobs page 1", "dashboard /jobs page 100", "dashboard /jobs name filter"):
            for base in ("ListJobs limit=50", f"ListJobs all {args.jobs}, sliced"):
                print(f"  ratio {dash} / {base}: {medians[dash] / medians[base]:.2f}x")
            base = "ListJobs limit=50"  # the row: against the bare RPC of the newest page, the hardest baseline
            rows.append({"metric": f"{dash[len('dashboard '):]} with {args.jobs:,} jobs (baseline: {base} over gRPC), "
                                   "issue 16", "cumulus": medians[dash] / 1000, "baseline": medians[base] / 1000,
                         "ratio": medians[dash] / medians[base], "goal": "<= 3x", "unit": "s"})
        client.close()
        channel.close()
        return rows
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
