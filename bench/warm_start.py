"""P1 warm: submit -> result of a trivial job through the SDK, taken by a warm service, vs raw Swarm, in one run.

    python bench/warm_start.py [--runs N] [--address HOST:PORT [--supervisor-config YAML]]   (root; local cluster
                                                                         and its supervisor up)

Owns the P1 warm row. Cumulus: ``add(2, 2)`` as ``cumulus.remote(gpu=0.5, duration=60, log_to_driver=False)``,
``.remote(2, 2).result()`` from this process over gRPC (TLS, token: the client config that ``cumulus local up``
writes) to the supervisor that ``cumulus local up`` started (``--address``; another process). That supervisor
keeps ``jobs.warm_per_device`` warm services per device per worker (a Swarm service whose container is started
and waits for one job); a job takes one, and the pool makes a new one in the background. Before every timed run
of either side the bench waits until the pools are full again (the ``cumulus_warm_services`` gauges of the
supervisor's ``/metrics``: every worker back to the ready count it had at the start, none starting; without
``/metrics`` it sleeps 2 s), so that each Cumulus job finds a warm service and the refill does not load the
baseline's run. Whether a run really took a warm service is read from the ``cumulus_job_starts_total{path}``
counters around it; the row says how many timed runs were warm.

Baseline: :meth:`lifecycle.RawSwarm.submit_to_result` (P1's raw loop: create the service, poll the task every
0.02 s, ``service_logs``) on the node where Cumulus ran its last job. Runs alternate between the two sides (the
order flips every run) after one untimed warm-up of each. Goal <= 0.3x. Also prints where Cumulus's time goes
per phase (``phases.py``, from the job's history through ``CumulusClient.describe``).
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import phases  # noqa: E402
from cumulus.client.client import CumulusClient  # noqa: E402
from cumulus.client.packaging import build_package  # noqa: E402
from cumulus.config import default_address, load_settings  # noqa: E402
from cumulus.local.state import load_cluster  # noqa: E402
from lifecycle import BASELINE_P1, TIMEOUT, RawSwarm, alternate_sync  # noqa: E402

GOAL = 0.3
REFILL_TIMEOUT = 15.0  # a pool not full again after this long: the run goes on (and may be cold: it is counted)


def add(a, b):
    return a + b


# --------------------------------------------------------------------------------------- the warm pools
class PoolGauges:
    """The supervisor's ``/metrics`` (HTTPS, its CA; no token needed): warm pools and job starts. Its address
    comes from the supervisor's config file: ``config``, or the local cluster's when ``address`` is its."""

    def __init__(self, address: str, config: str | None = None) -> None:
        self.url: str | None = None
        try:
            from cumulus.local import supervisor as local_supervisor

            if config is None and address != local_supervisor.ADDRESS:
                return  # another supervisor, and no config given: its HTTP port is not known here
            settings = load_settings(config or local_supervisor.config_path(), environ={})
            listen, ca = settings.server.http_listen, settings.security.tls_ca
            if not listen:
                return
            self.url = f"{'https' if settings.security.tls_cert else 'http'}://{listen}/metrics"
            self.context = ssl.create_default_context(cafile=ca) if ca else None
            self.read()
        except Exception as error:  # noqa: BLE001 - a measurement aid only: fall back to waiting
            print(f"  note: the supervisor's /metrics is not readable ({type(error).__name__}: {error}); waiting "
                  "2 s between runs instead of for the warm pools", file=sys.stderr)
            self.url = None

    def read(self) -> dict[str, Any]:
        from prometheus_client.parser import text_string_to_metric_families

        assert self.url is not None
        # No proxy, whatever the environment says: the supervisor's port is on this machine's bridge.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=self.context))
        with opener.open(self.url, timeout=5) as reply:
            text = reply.read().decode()
        out: dict[str, Any] = {"ready": {}, "starting": {}, "starts": {}}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "cumulus_warm_services":
                    out.setdefault(labels.get("state", "?"), {})[labels.get("worker", "?")] = int(sample.value)
                elif sample.name == "cumulus_job_starts_total":
                    out["starts"][labels.get("path", "?")] = sample.value
        return out

    def full(self) -> dict[str, int]:
        """Wait (up to REFILL_TIMEOUT) until no warm service is starting; the ready count of each worker then."""
        state = self.wait_until(lambda s: not any(s["starting"].values()))
        return dict(state["ready"])

    def wait_until(self, done: Any) -> dict[str, Any]:
        deadline = time.monotonic() + REFILL_TIMEOUT
        while True:
            state = self.read()
            if done(state) or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def wait_refilled(self, want: dict[str, int]) -> float:
        """Seconds until every worker has its ``want`` ready warm services again and none is starting."""
        t0 = time.perf_counter()
        if self.url is None:
            time.sleep(2.0)
            return 2.0
        state = self.wait_until(lambda s: not any(s["starting"].values())
                                and all(s["ready"].get(w, 0) >= n for w, n in want.items()))
        if any(state["ready"].get(w, 0) < n for w, n in want.items()):
            print(f"  note: warm pools not full after {REFILL_TIMEOUT:g} s: ready {state['ready']}, want {want}",
                  file=sys.stderr)
        return time.perf_counter() - t0

    def warm_starts(self) -> float | None:
        return self.read()["starts"].get("warm", 0.0) if self.url else None


# ---------------------------------------------------------------------------------------------- the sides
def cumulus_once(remote_add: Any, client: CumulusClient) -> tuple[float, str, dict[str, float]]:
    """(seconds from ``.remote()`` to the value at the client, the worker's hostname, the job's phase marks)."""
    client_submit = time.time()
    t0 = time.perf_counter()
    ref = remote_add.remote(2, 2)
    value = ref.result(timeout=TIMEOUT)
    elapsed = time.perf_counter() - t0
    client_result = time.time()
    assert value == 4, (ref.job_id, value)
    for _ in client.watch(ref.job_id, include_logs=False):
        pass  # untimed: the stream ends once the job is torn down, so the next run starts on a clean node
    desc = client.describe(ref.job_id)
    assert not desc.info.leaked, (ref.job_id, desc.info.leaked)
    marks = phases.marks(desc.events, submitted=desc.info.submitted_at, client_submit=client_submit,
                         client_result=client_result)
    return elapsed, desc.info.worker, marks


def measure(runs: int, address: str, config: str | None = None) -> dict:
    import cumulus

    desc = load_cluster()
    hostnames = {node["hostname"]: node["node_id"] for node in desc["nodes"]}
    raw = RawSwarm(desc, load_settings(environ={}).jobs.stop_grace)
    client = CumulusClient(address, log_to_driver=False)
    try:
        client.health()  # a clear error now if the supervisor is not there
        remote_add = cumulus.remote(gpu=0.5, duration=60, log_to_driver=False, address=address)(add)
        package = build_package(add, (2, 2))
        gauges = PoolGauges(address, config)
        want = gauges.full() if gauges.url else {}
        print(f"  warm pools at the start (ready per worker): "
              f"{(want or 'none (no warm services)') if gauges.url else 'unknown (no /metrics)'}", flush=True)
        node = {"id": ""}
        job_marks: list[dict[str, float]] = []
        warm: list[bool | None] = []
        waits: list[float] = []

        def ours() -> float:
            waits.append(gauges.wait_refilled(want))
            before = gauges.warm_starts()
            elapsed, worker, marks = cumulus_once(remote_add, client)
            after = gauges.warm_starts()
            warm.append(None if before is None or after is None else after > before)
            node["id"] = hostnames[worker]  # the baseline runs where Cumulus placed its last job
            job_marks.append(marks)
            return elapsed

        def theirs() -> float:
            gauges.wait_refilled(want)  # the pool's refill must not load the baseline's run
            if not node["id"]:  # the baseline's warm-up may come first: any worker
                node["id"] = next(n["node_id"] for n in desc["nodes"] if n["role"] == "worker")
            return raw.submit_to_result(node["id"], package)

        cumulus_all, baseline_all = alternate_sync(runs, ours, theirs)
    finally:
        client.close()
        raw.close()
    c, b = statistics.median(cumulus_all), statistics.median(baseline_all)
    timed_warm = warm[1:]  # the first Cumulus run is the warm-up
    warm_runs, warm_known = sum(1 for w in timed_warm if w), all(w is not None for w in timed_warm)
    took = f"{warm_runs} of {runs} runs took a warm service" if warm_known else "warm or not: unknown"
    return {"metric": "P1 warm submit->result (2+2), SDK over gRPC", "cumulus": c, "baseline": b, "ratio": c / b,
            "goal": f"<= {GOAL:g}x", "met": c / b <= GOAL, "runs": runs, "cumulus_all": cumulus_all,
            "baseline_all": baseline_all, "baseline_name": BASELINE_P1,
            "warm_runs": warm_runs, "warm_known": warm_known, "refill_waits": waits[1:],
            "phases": phases.summarize(job_marks[1:]),
            "phases_title": f"P1 warm, Cumulus side (SDK over gRPC to the supervisor; {took})"}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each side (default 7)")
    parser.add_argument("--address", default=None, help="the supervisor (default: the local cluster's)")
    parser.add_argument("--supervisor-config", default=None, metavar="YAML",
                        help="that supervisor's config file, for its /metrics (default: the local cluster's)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    r = measure(args.runs, args.address or default_address(), args.supervisor_config)
    warm = f"{r['warm_runs']} of {r['runs']}" if r["warm_known"] else "unknown (no /metrics)"
    print(f"P1 warm (2+2 via SDK): Cumulus {r['cumulus']:.3f} s   raw Swarm {r['baseline']:.3f} s   ratio "
          f"{r['ratio']:.2f}x (goal {r['goal']}){'' if r['met'] else '  (not met)'}; timed runs that took a warm "
          f"service: {warm}")
    print(f"  runs (s): cumulus {[round(x, 3) for x in r['cumulus_all']]}, baseline "
          f"{[round(x, 3) for x in r['baseline_all']]}; waits for the pools to refill before the Cumulus runs (s): "
          f"{[round(x, 2) for x in r['refill_waits']]}")
    phases.print_table(r["phases_title"], r["phases"])
    return [r]


if __name__ == "__main__":
    main()
