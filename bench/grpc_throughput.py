"""P3 over real gRPC: complete job lifecycles per second through the supervisor's front door, with in-memory
backends, against the least the same gRPC contract costs.

    python bench/grpc_throughput.py [--jobs N] [--rounds R] [--concurrency C ...]

Cumulus: a supervisor process (``open_supervisor`` with the unit-test fakes as backends, delays zero) serves gRPC
on a free loopback port; this process opens ``C`` concurrent ``SubmitJob`` streams (grpc.aio), each with a real
job package (``build_package`` of a trivial function, validated by the servicer like any other), and reads each
stream to its end (the job's events until teardown: accepted, QUEUED, SCHEDULING, placement, CREATING_PARTITION,
RUNNING, log line, result, COMPLETED). A lifecycle is one such stream.

Baseline: a bare grpc.aio server process implementing the same ``SubmitJob`` with no supervisor behind it, which
answers every submission with the same nine events at once. Both servers run in their own process (as a
supervisor does), the client in this one; rounds alternate between them. Goal: >= 0.8x the bare server.

Both serve TLS with the same certificate and the client sends its bearer token to both (the supervisor checks it,
as it does by default; the bare server ignores it): the baseline pays for the same encryption.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from cumulus.rpc.generated.v1 import cumulus_pb2 as pb  # noqa: E402
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc  # noqa: E402
from tests.credentials import run_credentials, security_overrides  # noqa: E402

TERMINAL = {pb.COMPLETED, pb.FAILED, pb.CANCELLED}


def trivial(a, b):
    return a + b


# ------------------------------------------------------------------------------------------------- servers
def client_credentials() -> grpc.ChannelCredentials:
    """TLS trusting the run's CA, with its admin token on every call (what a configured client sends)."""
    creds = run_credentials()
    return grpc.composite_channel_credentials(grpc.ssl_channel_credentials(creds.ca.read_bytes()),
                                              grpc.access_token_call_credentials(creds.admin_token))


def serve_cumulus(workers: int) -> None:
    """The supervisor with in-memory backends, serving gRPC on a free loopback port (printed), until killed."""
    import trio

    from cumulus.app import open_supervisor
    from cumulus.config import load_settings
    from tests.fakes import fake_cluster
    from tests.fakes.fake_cluster import FakeWorld, fake_node

    fake_cluster.DELAY = 0.0
    settings = load_settings(environ={}, overrides={
        "supervisor_id": "bench", "cluster.docker_host": "unix:///fake", "cluster.image": "sha256:fake",
        "cluster.poll_interval": 0.05, "journal.path": ":memory:", "jobs.max_queue": 1_000_000,
        "grpc.listen": "127.0.0.1:0", "server.http_listen": "", "logging.level": "WARNING", **security_overrides(),
    })

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(i + 1, devices=8) for i in range(workers)], nursery)
            async with open_supervisor(settings, backends=world.backends(), serve_rpc=True) as sup:
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.01)
                print(f"LISTENING {sup.listen_address}", flush=True)
                await trio.sleep_forever()

    trio.run(main)


def serve_bare(_workers: int) -> None:
    """The baseline: the same contract answered at once, by grpc.aio alone."""

    class Bare(cumulus_pb2_grpc.OrchestratorServiceServicer):
        def __init__(self) -> None:
            self.count = 0

        async def SubmitJob(self, request, context):
            self.count += 1
            job_id = f"bare-{self.count:012x}"
            now = time.time()

            def event(**kw):
                e = pb.JobEvent(job_id=job_id, **kw)
                e.time.FromNanoseconds(int(now * 1e9))
                return e

            yield event(message=f"accepted as job {job_id}")
            for state in (pb.QUEUED, pb.SCHEDULING):
                yield event(state=state)
            yield event(message="placed on fw1 device 0")
            for state in (pb.CREATING_PARTITION, pb.RUNNING):
                yield event(state=state)
            yield event(log=pb.LogLine(stream="stderr", text="[cumulus] job finished in 0 s"))
            yield event(result=pb.JobResult(envelope=b"\x81\xa2ok\xc3"))
            yield event(state=pb.COMPLETED)

    async def main() -> None:
        server = grpc.aio.server()
        cumulus_pb2_grpc.add_OrchestratorServiceServicer_to_server(Bare(), server)
        await serve_with_tls(server)

    asyncio.run(main())


async def serve_with_tls(server: grpc.aio.Server) -> None:
    """Start ``server`` with TLS (the run's test certificates, as the supervisor has) on a free loopback port, print
    ``LISTENING 127.0.0.1:<port>`` for the process that started this one, and serve until terminated."""
    creds = run_credentials()
    tls = grpc.ssl_server_credentials([(creds.server_key.read_bytes(), creds.server_cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", tls)
    await server.start()
    print(f"LISTENING 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


class Server:
    """One of the servers above in its own process; ``address`` once it listens."""

    def __init__(self, kind: str, workers: int = 10) -> None:
        run_credentials()  # made here, inherited by the server process: both ends trust the same CA
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--workers", str(workers)],
                                     stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        self.address = line.split()[1]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------------------------------------------- client
async def _lifecycles(address: str, jobs: int, concurrency: int, package: bytes) -> float:
    async with grpc.aio.secure_channel(address, client_credentials()) as channel:
        stub = cumulus_pb2_grpc.OrchestratorServiceStub(channel)
        request = pb.JobSubmission(code_package=package, gpu=0.125, duration_seconds=60,
                                   env={"FAKE_RUNTIME": "0"})
        remaining = jobs
        failures: list[str] = []

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                final = None
                async for event in stub.SubmitJob(request):
                    if event.WhichOneof("kind") == "state" and event.state in TERMINAL:
                        final = event.state
                if final != pb.COMPLETED:
                    failures.append(pb.JobState.Name(final) if final is not None else "no terminal state")

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{len(failures)} of {jobs} lifecycles did not complete: {failures[:5]}")
        return jobs / elapsed


def lifecycles_per_second(address: str, jobs: int, concurrency: int) -> float:
    from cumulus.client.packaging import build_package

    package = build_package(trivial, (2, 2), project_root=ROOT / "bench")
    return asyncio.run(_lifecycles(address, jobs, concurrency, package))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--serve", choices=["cumulus", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        (serve_cumulus if args.serve == "cumulus" else serve_bare)(args.workers)
        return []
    rows = []
    with Server("cumulus", args.workers) as cumulus, Server("bare") as bare:
        lifecycles_per_second(cumulus.address, 50, 10)  # warm-up (untimed)
        lifecycles_per_second(bare.address, 50, 10)
        for concurrency in args.concurrency:
            ours, base = [], []
            for round_ in range(args.rounds):
                pair = [(ours, cumulus.address), (base, bare.address)]
                for results, address in (pair if round_ % 2 == 0 else pair[::-1]):
                    results.append(lifecycles_per_second(address, args.jobs, concurrency))
            a, b = statistics.median(ours), statistics.median(base)
            print(f"P3 gRPC lifecycles/s at {concurrency:4d} concurrent: cumulus {a:7.0f}   bare gRPC {b:7.0f}   "
                  f"ratio {a / b:.3f} (goal >= 0.8x)", flush=True)
            rows.append({"metric": f"P3 job lifecycles/s over gRPC, {concurrency} concurrent, {args.workers} workers",
                         "cumulus": a, "baseline": b, "ratio": a / b, "goal": ">= 0.8x", "unit": "1/s"})
    return rows


if __name__ == "__main__":
    main()
    os._exit(0)
