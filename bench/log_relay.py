"""P4: log relay throughput, lines/s from a job's container to an SDK client vs docker-py reading the same logs.

    python bench/log_relay.py [--runs N] [--lines N] [--address HOST:PORT]      (root; `cumulus local up` first)

The job prints N lines (default 20,000; ``line 0000000 xxx...``, 73 bytes each) as fast as it can and returns N.

Cumulus  submitted through the SDK (``CumulusClient.submit_call(..., on_event=..., log_to_driver=False)``) to the
         local cluster's supervisor (the one ``cumulus local up`` started; ``--address``); the lines are counted as
         they reach the client on the job's event stream (the stream that ``log_to_driver`` prints from).
Baseline the same function as a raw Swarm service (:class:`lifecycle.RawSwarm`: same image, placement on the node
         where Cumulus ran its last job, runner command, package prepared on the host), its logs read with
         docker-py on the manager socket (``APIClient.service_logs(follow=True, stdout=True, stderr=True,
         timestamps=False)``, the source the supervisor itself follows).

lines/s = (lines received - 1) / (arrival of the last line - arrival of the first line), at the reader. Every run
checks that each of the N lines arrived exactly once, intact and in order, and that the job returned N; a run that
lost, duplicated or reordered a line raises (no figure is reported). Runs alternate between the two sides (the
order flips every run) after one untimed warm-up of each. Ratio = Cumulus / baseline, higher is better; goal
>= 0.8x. The spread of the per-run ratios (each run's Cumulus figure over the baseline run next to it: min /
median / max) is printed and kept in the row (``ratio_spread``). :func:`main` returns the row for an aggregating
``python -m bench``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import docker  # noqa: E402

from cumulus.client.client import CumulusClient  # noqa: E402
from cumulus.client.packaging import build_package, decode_result  # noqa: E402
from cumulus.config import default_address, load_settings  # noqa: E402
from cumulus.local.state import load_cluster  # noqa: E402
from cumulus.resources.swarm import TERMINAL_STATES  # noqa: E402
from lifecycle import POLL, TIMEOUT, RawSwarm  # noqa: E402

GOAL = 0.8  # Cumulus must deliver at least this share of docker-py's lines/s
PAD = "x" * 60


def print_lines(n):
    import sys

    pad = "x" * 60
    for i in range(n):
        print(f"line {i:07d} {pad}")
    sys.stdout.flush()
    return n


def expected_line(i: int) -> str:
    return f"line {i:07d} {PAD}"


class Received:
    """The job's lines as they reach a reader: their text, the first and last arrival times. ``add`` is all the
    reader does per line (the checks come after the run, outside the timed window)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lines: list[str] = []
        self.first: float | None = None
        self.last: float | None = None
        self.last_text = expected_line(n - 1)
        self.complete = threading.Event()  # the job's last line arrived

    def add(self, text: str, now: float) -> None:
        if not text.startswith("line "):
            return  # the runner's own lines ([cumulus] ... on stderr)
        if self.first is None:
            self.first = now
        self.last = now
        self.lines.append(text)
        if text == self.last_text:
            self.complete.set()

    def check(self, side: str) -> None:
        """Raise unless every line arrived exactly once, intact and in order."""
        got = self.lines
        if len(got) == self.n and all(text == expected_line(i) for i, text in enumerate(got)):
            return
        index = {}
        for pos, text in enumerate(got):
            try:
                index.setdefault(int(text.split()[1]), []).append(pos)
            except (IndexError, ValueError):
                pass
        missing = [i for i in range(self.n) if i not in index]
        dupes = [i for i, where in index.items() if len(where) > 1]
        wrong = next((pos for pos, text in enumerate(got) if pos >= self.n or text != expected_line(pos)), None)
        tail = missing and missing == list(range(self.n - len(missing), self.n))
        raise AssertionError(
            f"{side}: LINE CHECK FAILED (lost, duplicated or out of order): {len(got)} of {self.n} lines arrived"
            f"{' (the tail was cut: the relay stopped early)' if tail else ''}: {len(missing)} missing "
            f"(first {missing[:5]}{', last ' + str(missing[-5:]) if len(missing) > 5 else ''}), "
            f"{len(dupes)} duplicated {dupes[:5]}; first line out of place at position {wrong}: "
            f"{got[wrong][:40] if wrong is not None and wrong < len(got) else None!r}")

    def rate(self) -> float:
        assert self.first is not None and self.last is not None and self.last > self.first, (self.first, self.last)
        return (len(self.lines) - 1) / (self.last - self.first)


# ---------------------------------------------------------------------------------------------- the two sides
def cumulus_relay(client: CumulusClient, n: int) -> tuple[float, str]:
    """Submit through the SDK, count the lines as they reach the client; returns (lines/s, worker hostname)."""
    received = Received(n)

    def on_event(update: Any) -> None:
        if update.kind == "log":
            received.add(update.text, time.perf_counter())

    ref = client.submit_call(print_lines, (n,), on_event=on_event, gpu=0.5, duration=300, log_to_driver=False)
    value = ref.result(timeout=TIMEOUT + n / 1000)  # on_event saw every relayed line before the terminal state
    for _ in client.watch(ref.job_id, include_logs=False):
        pass  # the stream ends once the job is torn down: the next run starts on a clean node
    info = ref.status()
    received.check(f"cumulus job {ref.job_id}")
    assert value == n, (ref.job_id, value)
    assert not info.leaked, (ref.job_id, info.leaked)
    return received.rate(), info.worker


def raw_relay(raw: RawSwarm, node_id: str, package: bytes, n: int) -> float:
    """The baseline: a raw Swarm service, its logs followed with docker-py on the manager socket."""
    received = Received(n)
    service_id, job_dir = None, Path("/nonexistent")
    logs_api = docker.APIClient(base_url=f"unix://{raw.desc['manager_socket']}", version="auto", timeout=60)
    failure: list[BaseException] = []
    try:
        name, job_dir = raw._prepare(package)
        service_id = raw._create(name, job_dir, node_id)
        stream = logs_api.service_logs(service_id, follow=True, stdout=True, stderr=True, timestamps=False)

        def read() -> None:
            rest = b""
            try:
                for chunk in stream:  # docker frames: one log message (a line with its newline) each
                    now = time.perf_counter()
                    *lines, rest = (rest + chunk).split(b"\n")
                    for line in lines:
                        received.add(line.decode("utf-8", errors="replace"), now)
                    if received.complete.is_set():
                        return
            except Exception as error:  # noqa: BLE001 - reported by the caller (a plain thread: no Trio here)
                failure.append(error)
            finally:
                stream.close()  # Docker never ends a followed log: closing drops the connection
                received.complete.set()

        reader = threading.Thread(target=read, name="bench-raw-logs", daemon=True)
        reader.start()
        if not received.complete.wait(TIMEOUT + n / 1000):
            raise TimeoutError(f"raw service {service_id}: {len(received.lines)} of {n} lines after "
                               f"{TIMEOUT + n / 1000:.0f} s")
        reader.join(5)
        if failure:
            raise failure[0]
        deadline = time.monotonic() + TIMEOUT  # not timed: the job's own outcome, as Cumulus checks it
        while (state := (task := raw._task(service_id)) and task["Status"]["State"]) not in TERMINAL_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw task did not finish: {task and task['Status']}")
            time.sleep(POLL)
        assert state == "complete", (service_id, task["Status"])
        value = decode_result((job_dir / "output" / "result.msgpack").read_bytes()).value
    finally:
        logs_api.close()
        raw._cleanup(service_id, job_dir)
    received.check(f"raw service {service_id}")
    assert value == n, (service_id, value)
    return received.rate()


# ---------------------------------------------------------------------------------------------- the runs
def alternate(runs: int, cumulus: Callable[[], float], baseline: Callable[[], float]) -> tuple[list, list]:
    cumulus()  # warm-up, untimed (but checked)
    baseline()
    ours, theirs = [], []
    for i in range(runs):
        if i % 2 == 0:
            ours.append(cumulus())
            theirs.append(baseline())
        else:
            theirs.append(baseline())
            ours.append(cumulus())
    return ours, theirs


def measure(runs: int, n: int, address: str) -> dict:
    desc = load_cluster()
    hostnames = {node["hostname"]: node["node_id"] for node in desc["nodes"]}
    raw = RawSwarm(desc, load_settings(environ={}).jobs.stop_grace)
    client = CumulusClient(address, log_to_driver=False)
    try:
        client.health()  # a clear error now if the supervisor is not there
        package = build_package(print_lines, (n,))
        node = {"id": ""}

        def ours() -> float:
            rate, worker = cumulus_relay(client, n)
            node["id"] = hostnames[worker]  # the baseline runs where Cumulus placed its last job
            return rate

        def theirs() -> float:
            return raw_relay(raw, node["id"], package, n)

        cumulus_all, baseline_all = alternate(runs, ours, theirs)
    finally:
        client.close()
        raw.close()
    c, b = statistics.median(cumulus_all), statistics.median(baseline_all)
    # Each run's own ratio (the pair of runs next to each other): how far the machine's noise moves the figure.
    run_ratios = [ours / theirs for ours, theirs in zip(cumulus_all, baseline_all)]
    return {"metric": "P4 log relay lines/s", "cumulus": c, "baseline": b, "ratio": c / b, "goal": f">= {GOAL:g}x",
            "met": c / b >= GOAL, "unit": "lines/s", "runs": runs, "lines": n, "cumulus_all": cumulus_all,
            "baseline_all": baseline_all, "run_ratios": run_ratios,
            "ratio_spread": (min(run_ratios), statistics.median(run_ratios), max(run_ratios))}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each side (default 5)")
    parser.add_argument("--lines", type=int, default=20_000, help="lines the job prints (default 20,000)")
    parser.add_argument("--address", default=None, help="the supervisor (default: the local cluster's)")
    args = parser.parse_args(argv)
    if args.lines < 2 or args.runs < 1:
        parser.error("--lines must be >= 2 and --runs >= 1")
    r = measure(args.runs, args.lines, args.address or default_address())
    print(f"P4 log relay ({args.lines:,} lines): Cumulus SDK {r['cumulus']:9,.0f} lines/s   docker-py "
          f"{r['baseline']:9,.0f} lines/s   ratio {r['ratio']:.2f}x (goal {r['goal']})"
          f"{'' if r['met'] else '  (not met)'}")
    lo, mid, hi = r["ratio_spread"]
    print(f"  per-run ratio over {args.runs} runs: min {lo:.2f}x / median {mid:.2f}x / max {hi:.2f}x "
          f"({', '.join(f'{x:.2f}' for x in r['run_ratios'])}); lines/s per run: Cumulus "
          f"{[round(x) for x in r['cumulus_all']]}, docker-py {[round(x) for x in r['baseline_all']]}")
    return [r]


if __name__ == "__main__":
    main()
