"""P8: method calls on a class instance on the local cluster, against a remote object served by bare grpc.aio.

    python bench/instance_calls.py [--calls N] [--in-flight K] [--total M] [--address HOST:PORT]
                                   (root; the local cluster and its supervisor up)

Cumulus: ``Echo`` as ``cumulus.remote(gpu=0.1)``, one instance (``Echo.remote()``), called from this process
through the SDK: ``h.ping.remote(i).result()``. Each call goes SDK -> gRPC (TLS, token) -> the supervisor -> its
SSH connection to the node -> the instance's Unix socket in its container -> back. Round trip: ``--calls`` calls
one after another (median and p99). Throughput: ``--total`` calls with ``--in-flight`` of them outstanding at any
time (the next is sent as each returns).

Baseline: the plainest remote object a user could run instead: a bare grpc.aio server process (TLS with the same
kind of certificate, no supervisor, no token check) holding the object, with one unary method that calls it;
this process calls it with a sync grpc stub, the same way (one after another; then ``--in-flight`` futures
outstanding). Both sides take the same untimed warm-up. Goals (issue 20): median <= 10 ms, >= 500 calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

METHOD = "/bench.Echo/Ping"


class Echo:
    def __init__(self) -> None:
        self.calls = 0

    def ping(self, i: int) -> int:
        self.calls += 1
        return i


# -------------------------------------------------------------------------------------------------- baseline
def serve_bare() -> None:
    from grpc_throughput import serve_with_tls

    echo = Echo()

    async def ping(request: bytes, context: object) -> bytes:
        return str(echo.ping(int(request))).encode()

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler("bench.Echo", {
            "Ping": grpc.unary_unary_rpc_method_handler(ping)})
        server.add_generic_rpc_handlers((handler,))
        await serve_with_tls(server)

    asyncio.run(main())


def bare_figures(calls: int, in_flight: int, total: int) -> tuple[list[float], float]:
    from tests.credentials import run_credentials

    creds = run_credentials()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-bare"], stdout=subprocess.PIPE, text=True,
                            cwd=str(ROOT))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("LISTENING "), line
        channel = grpc.secure_channel(line.split()[1], grpc.ssl_channel_credentials(creds.ca.read_bytes()))
        ping = channel.unary_unary(METHOD)
        for i in range(50):
            ping(str(i).encode())
        latencies = []
        for i in range(calls):
            started = time.perf_counter()
            assert int(ping(str(i).encode())) == i
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        window = [ping.future(str(i).encode()) for i in range(in_flight)]
        for i in range(in_flight, total + in_flight):
            window.pop(0).result()
            if i < total:
                window.append(ping.future(str(i).encode()))
        rate = total / (time.perf_counter() - started)
        channel.close()
        return latencies, rate
    finally:
        proc.kill()
        proc.wait(10)


# -------------------------------------------------------------------------------------------------- Cumulus
def cumulus_figures(address: str | None, calls: int, in_flight: int, total: int) -> tuple[list[float], float]:
    import cumulus

    remote_echo = cumulus.remote(Echo).options(gpu=0.1, duration=900, log_to_driver=False,
                                               **({"address": address} if address else {}))
    handle = remote_echo.remote()
    try:
        for i in range(50):  # the instance starts, and the stream opens
            assert handle.ping.remote(i).result(120) == i
        latencies = []
        for i in range(calls):
            started = time.perf_counter()
            assert handle.ping.remote(i).result(60) == i
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        window = [handle.ping.remote(i) for i in range(in_flight)]
        for i in range(in_flight, total + in_flight):
            window.pop(0).result(60)
            if i < total:
                window.append(handle.ping.remote(i))
        rate = total / (time.perf_counter() - started)
        return latencies, rate
    finally:
        cumulus.kill(handle)


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--total", type=int, default=3000)
    parser.add_argument("--address", default=None, help="the supervisor (default: the client config's)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare()
        return []
    ours, our_rate = cumulus_figures(args.address, args.calls, args.in_flight, args.total)
    base, base_rate = bare_figures(args.calls, args.in_flight, args.total)
    median, base_median = statistics.median(ours), statistics.median(base)
    print(f"P8 round trip: median {median * 1e3:.2f} ms, p99 {p99(ours) * 1e3:.2f} ms "
          f"(bare grpc.aio: median {base_median * 1e3:.2f} ms, p99 {p99(base) * 1e3:.2f} ms)")
    print(f"P8 throughput, {args.in_flight} in flight: {our_rate:.0f} calls/s (bare grpc.aio: {base_rate:.0f}/s)")
    name = f"a bare grpc.aio server process holding the object (TLS), sync grpc stub; {args.calls} calls"
    return [
        {"metric": "P8 method call round trip, median", "cumulus": median * 1e3, "baseline": base_median * 1e3,
         "ratio": median / base_median, "unit": "ms", "goal": "<= 10 ms", "baseline_name": name},
        {"metric": "P8 method call round trip, p99", "cumulus": p99(ours) * 1e3, "baseline": p99(base) * 1e3,
         "ratio": p99(ours) / p99(base), "unit": "ms", "goal": "report", "baseline_name": name},
        {"metric": f"P8 method calls/s, {args.in_flight} in flight", "cumulus": our_rate, "baseline": base_rate,
         "ratio": our_rate / base_rate, "unit": "calls/s", "goal": ">= 500/s",
         "baseline_name": f"the same server, {args.in_flight} grpc futures outstanding; {args.total} calls"},
    ]


if __name__ == "__main__":
    rows = main()
    sys.exit(0)
