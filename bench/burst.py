"""P7: a burst of N trivial jobs on the real local cluster, Cumulus vs raw Swarm, in one run.

    python bench/burst.py [--jobs N] [--runs R] [--address HOST:PORT]   (root; local cluster and supervisor up)

N defaults to ``$CUMULUS_BENCH_P7_JOBS`` or 100; ``--jobs 5`` is a quick check.

Cumulus  ``add(i, i)`` as ``cumulus.remote(gpu=0.01, duration=120, log_to_driver=False)``, N calls submitted at
         once from this one client (``[add.remote(i, i) for i in range(N)]``), then ``cumulus.get`` on all, against
         the supervisor that ``cumulus local up`` started (``--address``). The value of every job is checked.
Baseline raw Swarm, the plainest docker-py script (the approach of ``shared/bench/throughput.py``, which the goal
         is stated against): N services created one after another on the manager socket - the worker image (by
         id), ``python3 -c print(i+i)``, init, restart condition none, no network, spread over the worker nodes
         (``node.id==`` constraint, round robin) - then every task polled (every 0.05 s) until complete and its
         logs read; the services are removed afterwards (timed and printed, but not in the figure).

jobs/s = N / (last result - first submit) on both sides. Runs alternate between the two sides (the order flips
every run) after one untimed warm-up of each; after each run the side's jobs are torn down / its services removed
and gone (not timed), so that the next run starts on a clean cluster. Ratio = Cumulus / baseline, goal >= 2.0x
(issue 19).

Also, per Cumulus job: the worker it was placed on and its submit -> start wait (``started_at - submitted_at``
of its status: submit -> RUNNING), with the phases from its history (submit -> SCHEDULING -> placed -> RUNNING),
printed as min / median / max and jobs per worker; and the CPU that the supervisor (the local cluster's, found
by its pid file; read from /proc/<pid>/stat), the manager's and the workers' dockerd and this client used during
each side's timed window (``cpu_meter.py``). :func:`main` returns the row for ``python -m bench``; ``details``
holds the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import docker  # noqa: E402
from docker.types import RestartPolicy  # noqa: E402

from cumulus.config import default_address  # noqa: E402
from cumulus.local.state import load_cluster  # noqa: E402
from cpu_meter import CpuMeter, supervisor_pid  # noqa: E402

GOAL = 2.0  # Cumulus must complete at least twice as many jobs per second as raw Swarm (issue 19)
GPU = 0.01
TIMEOUT = 600.0
POLL = 0.05  # raw side: as shared/bench/throughput.py
LABEL = "cumulus.bench.burst"


def add(a, b):
    return a + b


# ---------------------------------------------------------------------------------------------- the two sides
class RawBurst:
    """The baseline, as shared/bench/throughput.py does it (blocking docker-py)."""

    def __init__(self, desc: dict) -> None:
        self.desc = desc
        self.cli = docker.DockerClient(base_url=f"unix://{desc['manager_socket']}", version="auto", timeout=60)
        self.workers = [n["node_id"] for n in desc["nodes"] if n["role"] == "worker"]
        self.names = {n["node_id"]: n["name"] for n in desc["nodes"]}

    def close(self) -> None:
        self.cli.close()

    def run(self, n: int, cpu: CpuMeter) -> dict[str, Any]:
        tag = secrets.token_hex(4)
        services: list[Any] = []
        try:
            cpu.start()
            t0 = time.perf_counter()
            for i in range(n):
                services.append(self.cli.services.create(
                    image=self.desc["image_id"], name=f"bench-burst-{tag}-{i}",
                    command=["python3", "-c", f"print({i}+{i})"],
                    restart_policy=RestartPolicy(condition="none"), init=True,
                    constraints=[f"node.id=={self.workers[i % len(self.workers)]}"], labels={LABEL: tag}))
            created = time.perf_counter() - t0
            pending = set(range(n))
            done: dict[int, dict] = {}
            deadline = time.monotonic() + TIMEOUT
            while pending:
                for i in list(pending):
                    tasks = services[i].tasks()
                    if tasks and tasks[0]["Status"]["State"] in ("complete", "failed", "rejected"):
                        assert tasks[0]["Status"]["State"] == "complete", tasks[0]["Status"]
                        out = b"".join(services[i].logs(stdout=True))
                        assert out.strip() == str(2 * i).encode(), (i, out[-200:])
                        done[i] = tasks[0]
                        pending.discard(i)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw burst: {len(pending)} of {n} services not complete after {TIMEOUT} s")
                if pending:
                    time.sleep(POLL)
            elapsed = time.perf_counter() - t0
            shares = cpu.stop(elapsed)
        finally:
            removal = self._remove_all(tag, services)
        per_worker: dict[str, int] = {}
        for task in done.values():
            name = self.names.get(task.get("NodeID", ""), task.get("NodeID", "?"))
            per_worker[name] = per_worker.get(name, 0) + 1
        return {"elapsed": elapsed, "rate": n / elapsed, "create_all": created, "remove_all": removal,
                "per_worker": per_worker, "cpu": shares}

    def _remove_all(self, tag: str, services: list[Any]) -> float:
        """Remove the run's services (and any left by an earlier failed run with the same tag) and wait until
        their tasks are gone; returns the seconds it took."""
        t0 = time.perf_counter()
        ids = {s.id for s in services}
        try:
            ids |= {s.id for s in self.cli.services.list(filters={"label": f"{LABEL}={tag}"})}
        except docker.errors.APIError:
            pass
        for service_id in ids:
            try:
                self.cli.api.remove_service(service_id)
            except docker.errors.NotFound:
                pass
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = [t for t in self.cli.api.tasks(filters={"label": f"{LABEL}={tag}"})]
            if not left:
                break
            time.sleep(0.2)
        return time.perf_counter() - t0


class CumulusBurst:
    """Cumulus through the SDK, the way a user writes it."""

    def __init__(self, address: str) -> None:
        import cumulus
        from cumulus.client.client import CumulusClient

        self.cumulus = cumulus
        self.address = address
        self.client = CumulusClient(address, log_to_driver=False)
        self.client.health()  # a clear error now if the supervisor is not there
        self.remote_add = cumulus.remote(gpu=GPU, duration=120, log_to_driver=False, address=address)(add)

    def close(self) -> None:
        self.client.close()

    def run(self, n: int, cpu: CpuMeter) -> dict[str, Any]:
        cpu.start()
        t0 = time.perf_counter()
        refs, calls = [], []
        for i in range(n):
            before = time.perf_counter()
            refs.append(self.remote_add.remote(i, i))  # returns once the supervisor accepted the job
            calls.append(time.perf_counter() - before)
        submitted = time.perf_counter() - t0
        values = self.cumulus.get(refs, timeout=TIMEOUT)
        elapsed = time.perf_counter() - t0
        shares = cpu.stop(elapsed)
        assert values == [2 * i for i in range(n)], values[:10]
        jobs = [self._job(ref.job_id) for ref in refs]  # not timed
        self._wait_torn_down({ref.job_id for ref in refs})
        return {"elapsed": elapsed, "rate": n / elapsed, "submit_all": submitted, "submit_calls": calls, "jobs": jobs,
                "cpu": shares}

    def _job(self, job_id: str) -> dict[str, Any]:
        """Where the job ran and when it moved: from its status and history (Unix seconds)."""
        desc = self.client.describe(job_id)
        info = desc.info
        at: dict[str, float] = {}
        for event in desc.events:
            key = event.state if event.kind == "state" else event.kind
            at.setdefault(key, event.at)  # the first time it happened
        return {"job_id": job_id, "worker": info.worker, "device": info.device_index,
                "submitted": info.submitted_at, "started": info.started_at, "finished": info.finished_at,
                "scheduling": at.get("SCHEDULING"), "placed": at.get("placement"),
                "partition": at.get("CREATING_PARTITION"), "running": at.get("RUNNING"),
                "leaked": list(info.leaked)}

    def _wait_torn_down(self, job_ids: set[str]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            live = {info.job_id for info in self.client.list_jobs(include_finished=False)}
            if not live & job_ids:
                return
            time.sleep(0.2)
        print(f"  note: {len(live & job_ids)} jobs not torn down after {TIMEOUT:g} s", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- summary
BUSY = "machine busy (all cores)"
#: What one container per job costs the machine whoever asks for it: the workers' dockerd, containerd, its shims
#: and runc, the short-lived processes they start, the kernel, and the job's own process (a Python, both sides).
#: Not the manager's dockerd nor the clients: the raw loop's polling loads those.
ENGINE = ("containerd, shims, runc", "unaccounted (short-lived processes)", "kernel threads", "job containers ",
          "dockerd ")
MANAGER_DOCKERD = "dockerd cw0"  # the local cluster's manager node


def is_engine(kind: str) -> bool:
    return kind != MANAGER_DOCKERD and any(kind == e or (e.endswith(" ") and kind.startswith(e)) for e in ENGINE)


def cpu_ms_per_job(run: dict, n: int, engine: bool = False) -> float:
    """Milliseconds of CPU per job in a run's window: the whole machine's, or (``engine``) the container engine's
    and the job processes' (:func:`is_engine`)."""
    shares = run["cpu"]
    share = sum(v for kind, v in shares.items() if is_engine(kind)) if engine else shares.get(BUSY, 0.0)
    return 1000 * share * run["elapsed"] / n


def cpu_floor(n: int, ours: list[dict], theirs: list[dict]) -> dict[str, float]:
    """The CPU arithmetic of the goal on this machine (medians over the timed runs, ms per job): ``budget`` is what
    a Cumulus job may cost the whole machine to complete ``GOAL`` times as many jobs per second as raw Swarm while
    the machine is as busy as in raw's window; ``raw_engine`` is what raw Swarm's container per job cost the engine
    and the job's process; ``cumulus`` and ``raw`` are the whole machine's per job."""
    raw_busy = statistics.median(cpu_ms_per_job(r, n) for r in theirs)
    return {"cumulus": statistics.median(cpu_ms_per_job(r, n) for r in ours), "raw": raw_busy,
            "budget": raw_busy / GOAL, "raw_engine": statistics.median(cpu_ms_per_job(r, n, engine=True) for r in theirs)}


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"min {min(values):.2f} s, median {statistics.median(values):.2f} s, max {max(values):.2f} s"
            f" (n={len(values)})")


def summarize_jobs(jobs: list[dict]) -> dict[str, Any]:
    def gaps(a: str, b: str) -> list[float]:
        return [j[b] - j[a] for j in jobs if j.get(a) is not None and j.get(b) is not None]

    per_worker: dict[str, int] = {}
    for job in jobs:
        per_worker[job["worker"] or "?"] = per_worker.get(job["worker"] or "?", 0) + 1
    return {
        "per_worker": dict(sorted(per_worker.items())),
        "wait": gaps("submitted", "started"),  # submit -> RUNNING
        "to_scheduling": gaps("submitted", "scheduling"),
        "scheduling_to_placed": gaps("scheduling", "placed"),
        "placed_to_running": gaps("placed", "running"),
        "running_to_finished": gaps("started", "finished"),
        "leaked": [j["job_id"] for j in jobs if j["leaked"]],
    }


def print_run(side: str, n: int, run: dict) -> None:
    shares = run["cpu"]
    cpu = ", ".join(f"{name} {100 * share:.0f} %" for name, share in sorted(shares.items(), key=lambda kv: -kv[1])
                    if share >= 0.005)
    if side == "cumulus":
        s = summarize_jobs(run["jobs"])
        print(f"  cumulus: {n} jobs in {run['elapsed']:.2f} s = {run['rate']:.2f} jobs/s (submitting all took "
              f"{run['submit_all']:.2f} s); jobs per worker {s['per_worker']}")
        print(f"    one .remote() call (package + SubmitJob until accepted): {spread(run['submit_calls'])}")
        print(f"    submit -> start (RUNNING) wait: {spread(s['wait'])}")
        print(f"    phases: submit -> SCHEDULING {spread(s['to_scheduling'])}; SCHEDULING -> placed "
              f"{spread(s['scheduling_to_placed'])}; placed -> RUNNING {spread(s['placed_to_running'])}; "
              f"RUNNING -> ended {spread(s['running_to_finished'])}")
        if s["leaked"]:
            print(f"    LEAKED teardown in {len(s['leaked'])} jobs: {s['leaked'][:5]}")
    else:
        print(f"  raw swarm: {n} services in {run['elapsed']:.2f} s = {run['rate']:.2f} jobs/s (creating all took "
              f"{run['create_all']:.2f} s; removing them afterwards {run['remove_all']:.2f} s, not counted); "
              f"tasks per worker {dict(sorted(run['per_worker'].items()))}")
    print(f"    CPU during the window (% of one core; the machine has {os.cpu_count()} cores): {cpu}; per job "
          f"{cpu_ms_per_job(run, n):.0f} ms in all, {cpu_ms_per_job(run, n, engine=True):.0f} ms by the container engine "
          "and the job's process", flush=True)


# ---------------------------------------------------------------------------------------------- the runs
def alternate(runs: int, cumulus: Callable[[], dict], baseline: Callable[[], dict]) -> tuple[list, list]:
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


def measure(n: int, runs: int, address: str, warm_up: int) -> dict:
    desc = load_cluster()
    cpu = CpuMeter(supervisor_pid(address), desc["nodes"])
    if "supervisor" not in cpu.fixed:
        print(f"  note: the supervisor at {address} is not the local cluster's (or its pid is unknown): its CPU "
              "is not measured", file=sys.stderr)
    raw = RawBurst(desc)
    ours_side = CumulusBurst(address)
    warm = {"cumulus": True, "raw": True}

    def ours() -> dict:
        size = warm_up if warm["cumulus"] else n
        run = ours_side.run(size, cpu)
        if warm["cumulus"]:
            print(f"  cumulus warm-up ({size} jobs): {run['elapsed']:.2f} s", flush=True)
        else:
            print_run("cumulus", size, run)
        warm["cumulus"] = False
        return run

    def theirs() -> dict:
        size = warm_up if warm["raw"] else n
        run = raw.run(size, cpu)
        if warm["raw"]:
            print(f"  raw swarm warm-up ({size} services): {run['elapsed']:.2f} s", flush=True)
        else:
            print_run("raw", size, run)
        warm["raw"] = False
        return run

    try:
        cumulus_all, baseline_all = alternate(runs, ours, theirs)
    finally:
        ours_side.close()
        raw.close()
    c = statistics.median(r["rate"] for r in cumulus_all)
    b = statistics.median(r["rate"] for r in baseline_all)
    jobs = [job for run in cumulus_all for job in run["jobs"]]
    summary = summarize_jobs(jobs)
    supervisor_cpu = [r["cpu"]["supervisor"] for r in cumulus_all if "supervisor" in r["cpu"]]
    return {"metric": f"P7 burst of {n} trivial jobs (gpu={GPU:g}), completed jobs/s", "cumulus": c, "baseline": b,
            "ratio": c / b, "goal": f">= {GOAL:g}x", "met": c / b >= GOAL, "unit": "jobs/s", "runs": runs, "jobs": n,
            "cumulus_all": [r["rate"] for r in cumulus_all], "baseline_all": [r["rate"] for r in baseline_all],
            "cpu_per_job_ms": cpu_floor(n, cumulus_all, baseline_all),
            "details": {"wait": summary["wait"], "per_worker": summary["per_worker"],
                        "supervisor_cpu": supervisor_cpu, "cumulus_runs": cumulus_all, "raw_runs": baseline_all}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("CUMULUS_BENCH_P7_JOBS", "100")),
                        help="jobs per burst (default $CUMULUS_BENCH_P7_JOBS or 100)")
    parser.add_argument("--runs", type=int, default=3, help="timed bursts of each side (default 3)")
    parser.add_argument("--warm-up", type=int, default=5, help="jobs in the untimed warm-up burst of each side")
    parser.add_argument("--address", default=None, help="the supervisor (default: the local cluster's)")
    parser.add_argument("--json", default=None, help="also write the row, with every job's record, to this file")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.runs < 1 or args.warm_up < 1:
        parser.error("--jobs, --runs and --warm-up must be >= 1")
    r = measure(args.jobs, args.runs, args.address or default_address(), args.warm_up)
    d = r["details"]
    print(f"P7 burst of {args.jobs} jobs: Cumulus {r['cumulus']:.2f} jobs/s   raw Swarm {r['baseline']:.2f} jobs/s   "
          f"ratio {r['ratio']:.2f}x (goal {r['goal']}){'' if r['met'] else '  (not met)'}")
    print(f"  Cumulus, all timed runs: submit -> start wait {spread(d['wait'])}; jobs per worker {d['per_worker']}"
          + (f"; supervisor CPU {', '.join(f'{100 * s:.0f} %' for s in d['supervisor_cpu'])} of one core"
             if d["supervisor_cpu"] else ""))
    f = r["cpu_per_job_ms"]
    print(f"  CPU per job (ms, whole machine): Cumulus {f['cumulus']:.0f}, raw Swarm {f['raw']:.0f}. {GOAL:g}x raw's "
          f"rate at raw's load leaves {f['budget']:.0f} ms per job; raw's container per job alone cost "
          f"{f['raw_engine']:.0f} ms (engine and the job's process)"
          + (": a job in a container of its own cannot meet the goal on this machine." if f["raw_engine"] > f["budget"]
             else "."))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str))
    return [r]


if __name__ == "__main__":
    main()
