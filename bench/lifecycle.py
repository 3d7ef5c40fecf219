"""P1 cold / P2: a job's life through Cumulus vs the same work done directly on Docker Swarm, on the local cluster.

    python bench/lifecycle.py [--runs N] [--only p1|p2]      (root; `cumulus local up` first)

Owns the two rows measured with a supervisor of its own (``open_supervisor`` in this process,
``jobs.warm_per_device`` 0: no warm services, every job takes the cold path; ``cluster.poll_interval`` 0.1 s). The
baseline's side is ``raw_swarm.py``.

P1 cold  submit -> result of a trivial job (2+2, gpu=0.5) through ``open_supervisor``, vs raw Swarm, the plainest
         docker-py loop: on the manager socket, create a service with the same image (by id), placement
         (``node.id==``), init, restart condition none, no network, stop grace and runner command, on an
         equivalent package prepared on the host under ``<jobs_dir>/bench-raw-*/`` (timed: it stands for the
         upload); poll the task every 0.02 s until it is complete and read its logs (``service_logs``). The result
         file is not read in the timed part (it is checked afterwards); the service is removed (not timed).
         Goal <= 1.10x. Also prints where Cumulus's time goes per phase (``phases.py``, from the job's history).
P2       cancel -> container stopped and partition released (``await sup.cancel``) of a RUNNING job that sleeps
         60 s, vs raw ``service rm`` -> container stopped (no longer running), seen on the worker's own dockerd
         (polled every 20 ms); the time until the raw container is removed is printed too. When a Cumulus cancel
         returns, the worker's dockerd is asked whether the container still runs (it should not; counted and
         printed); the figure is when it is seen not running (polled every 20 ms from cancel's return on, like
         the baseline's), and cancel's own return time is printed beside it. Goal <= 0.3x.

Runs alternate between Cumulus and the baseline (the order flips every run) so that machine noise hits both alike;
one untimed warm-up of each comes first. Prints a table (metric, medians, ratio, goal) and returns it from
:func:`main` as a list of dicts for an aggregating ``python -m bench``.
"""

from __future__ import annotations

import argparse
import inspect
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cumulus.app import SupervisorApi, open_supervisor  # noqa: E402
from cumulus.client.packaging import build_package, decode_result  # noqa: E402
from cumulus.config import load_settings  # noqa: E402
from cumulus.jobs import JobRecord, JobSpec, JobState  # noqa: E402
from cumulus.local.state import load_cluster  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phases  # noqa: E402
from raw_swarm import GONE_POLL, TIMEOUT, RawSwarm  # noqa: E402

POLL = 0.1  # the supervisor's task-watcher interval in this bench (cluster.poll_interval)


def add(a, b):
    return a + b


def sleeper(seconds):
    import time

    time.sleep(seconds)
    return seconds


# ------------------------------------------------------------------------------------------------ Cumulus
def worker_containers(raw: RawSwarm, node_id: str, job_id: str, running_only: bool = False) -> list[dict]:
    return raw.workers[node_id].containers(all=not running_only, filters={"label": f"cumulus.job_id={job_id}"})


async def wait_state(record: JobRecord, state: JobState) -> None:
    with trio.fail_after(TIMEOUT):
        async for event in record.events(replay_logs=False):
            if event.state is state:
                return
    raise RuntimeError(f"{record.job_id} ended ({record.state.value} {record.reason!r}) before {state.value}")


async def cumulus_submit_to_result(sup, package: bytes) -> tuple[float, str, dict[str, float]]:
    """(seconds submit -> COMPLETED with the result, node id, the job's phase marks)."""
    client_submit = time.time()
    start = time.perf_counter()
    record = await sup.submit(JobSpec(package=package, gpu=0.5, duration=60))
    await wait_state(record, JobState.COMPLETED)
    elapsed = time.perf_counter() - start
    client_result = time.time()
    assert record.result is not None and decode_result(record.result).value == 4
    with trio.fail_after(TIMEOUT):
        await record.torn_down.wait()
    _, history = await sup.describe(record.job_id)  # untimed
    marks = phases.marks(history, submitted=record.submitted_at, client_submit=client_submit,
                         client_result=client_result)
    return elapsed, record.placement.node_id, marks


# Whether this supervisor's cancel can return once the container stopped and the partition was released (before
# the service is removed); where it cannot, plain cancel returns after the whole teardown.
CANCEL_UNTIL_STOPPED = "until_stopped" in inspect.signature(SupervisorApi.cancel).parameters


async def cumulus_cancel(sup, raw: RawSwarm, package: bytes, still_running: list[str]) -> tuple[float, float]:
    """(seconds until ``sup.cancel`` returned, seconds until it had returned *and* the worker's dockerd showed the
    container not running: polled every 20 ms from the return on, as the baseline's stop is seen)."""
    record = await sup.submit(JobSpec(package=package, gpu=0.5, duration=120))
    await wait_state(record, JobState.RUNNING)
    node_id = record.placement.node_id
    with trio.fail_after(TIMEOUT):
        while not await trio.to_thread.run_sync(worker_containers, raw, node_id, record.job_id, True):
            await trio.sleep(GONE_POLL)
    await trio.sleep(0.3)  # as for the baseline
    start = time.perf_counter()
    with trio.fail_after(TIMEOUT):
        if CANCEL_UNTIL_STOPPED:
            await sup.cancel(record.job_id, until_stopped=True)
        else:
            await sup.cancel(record.job_id)
    elapsed = time.perf_counter() - start
    # What cancel promised: the container no longer runs, on the worker's own dockerd (asked at once). Where it
    # still runs, say so and time when it really stops, so that the row can be read against the baseline's stop.
    running = await trio.to_thread.run_sync(worker_containers, raw, node_id, record.job_id, True)
    if running:
        still_running.append(record.job_id)
        with trio.fail_after(TIMEOUT):
            while await trio.to_thread.run_sync(worker_containers, raw, node_id, record.job_id, True):
                await trio.sleep(GONE_POLL)
        print(f"  NOTE: {record.job_id}: container still RUNNING on the worker when cancel returned after "
              f"{elapsed:.3f}s; seen stopped after {time.perf_counter() - start:.3f}s", file=sys.stderr)
    seen_stopped = time.perf_counter() - start
    with trio.fail_after(TIMEOUT):
        await record.torn_down.wait()  # untimed: the service's removal goes on after cancel returned
    assert record.state is JobState.CANCELLED and record.teardown is not None and not record.teardown.leaked, \
        (record.state, record.teardown)
    return elapsed, seen_stopped


# ---------------------------------------------------------------------------------------------- the runs
async def alternate(runs: int, cumulus: Callable[[], Any], baseline: Callable[[], Any]) -> tuple[list, list]:
    await cumulus()  # warm-up, untimed
    await baseline()
    ours, theirs = [], []
    for i in range(runs):
        if i % 2 == 0:
            ours.append(await cumulus())
            theirs.append(await baseline())
        else:
            theirs.append(await baseline())
            ours.append(await cumulus())
    return ours, theirs


def alternate_sync(runs: int, cumulus: Callable[[], Any], baseline: Callable[[], Any]) -> tuple[list, list]:
    """:func:`alternate` for blocking sides (the SDK benches)."""
    cumulus()  # warm-up, untimed
    baseline()
    ours, theirs = [], []
    for i in range(runs):
        first, second = (cumulus, baseline) if i % 2 == 0 else (baseline, cumulus)
        a, b = first(), second()
        ours.append(a if first is cumulus else b)
        theirs.append(b if first is cumulus else a)
    return ours, theirs


BASELINE_P1 = "raw Swarm: docker-py create service, poll task 0.02 s, service_logs"
BASELINE_P2 = "raw Swarm: service rm -> container stopped (worker dockerd, 20 ms)"


def row(metric: str, ours: list[float], theirs: list[float], goal: float, **extra: Any) -> dict:
    c, b = statistics.median(ours), statistics.median(theirs)
    return {"metric": metric, "cumulus": c, "baseline": b, "ratio": c / b, "goal": f"<= {goal:g}x",
            "met": c / b <= goal, "runs": len(ours), "cumulus_all": ours, "baseline_all": theirs, **extra}


async def measure(runs: int, only: str | None) -> list[dict]:
    desc = load_cluster()
    settings = load_settings(environ={}, overrides={
        "supervisor_id": f"bench-{secrets.token_hex(3)}", "cluster.allow_non_gpu_devices": True,
        "cluster.poll_interval": POLL, "jobs.warm_per_device": 0})  # P1 cold: no warm services
    raw = RawSwarm(desc, settings.jobs.stop_grace)
    results = []
    try:
        async with open_supervisor(settings, serve_rpc=False) as sup:
            with trio.fail_after(30):
                while not (workers := await sup.list_workers()) or not all(w.healthy for w in workers):
                    await trio.sleep(0.05)
            node = {"id": workers[0].node_id}  # where Cumulus places a lone job; the baseline follows it

            if only in (None, "p1"):
                trivial = build_package(add, (2, 2))
                job_marks: list[dict[str, float]] = []

                async def p1_cumulus() -> float:
                    elapsed, node["id"], marks = await cumulus_submit_to_result(sup, trivial)
                    job_marks.append(marks)
                    return elapsed

                async def p1_raw() -> float:
                    return await trio.to_thread.run_sync(raw.submit_to_result, node["id"], trivial)

                ours, theirs = await alternate(runs, p1_cumulus, p1_raw)
                results.append(row("P1 cold submit->result (2+2), in process", ours, theirs, 1.10,
                                   baseline_name=BASELINE_P1, phases=phases.summarize(job_marks[1:]),
                                   phases_title="P1 cold, Cumulus side (in-process supervisor, no warm services)"))

            if only in (None, "p2"):
                sleepy = build_package(sleeper, (60,))
                removed: list[float] = []
                still_running: list[str] = []
                returned_all: list[float] = []

                # The figure is when the container is seen stopped on the worker's dockerd (and cancel returned),
                # as the baseline's: a cancel that returns while the container still runs is not counted as done.
                async def p2_cumulus() -> float:
                    returned, stopped = await cumulus_cancel(sup, raw, sleepy, still_running)
                    returned_all.append(returned)
                    return stopped

                async def p2_raw() -> float:
                    stopped, gone = await trio.to_thread.run_sync(raw.rm_to_gone, node["id"], sleepy)
                    removed.append(gone)
                    return stopped

                ours, theirs = await alternate(runs, p2_cumulus, p2_raw)
                results.append(row("P2 cancel->container stopped+released", ours, theirs, 0.3,
                                   baseline_name=BASELINE_P2,
                                   baseline_removed_median=statistics.median(removed[1:] or removed),
                                   still_running=still_running, cancel_until_stopped=CANCEL_UNTIL_STOPPED,
                                   cumulus_returned_all=returned_all[1:],
                                   cumulus_returned_median=statistics.median(returned_all[1:] or returned_all)))
    finally:
        raw.close()
    return results


def print_table(results: list[dict]) -> None:
    print(f"{'metric':42} {'cumulus':>10} {'baseline':>10} {'ratio':>7}  goal")
    for r in results:
        print(f"{r['metric']:42} {r['cumulus']:9.3f}s {r['baseline']:9.3f}s {r['ratio']:6.2f}x  {r['goal']}"
              f"{'' if r['met'] else '  (not met)'}")
    for r in results:
        print(f"  {r['metric']}: baseline = {r.get('baseline_name', '?')}; runs (s): cumulus "
              f"{[round(x, 3) for x in r['cumulus_all']]}, baseline {[round(x, 3) for x in r['baseline_all']]}")
        if "baseline_removed_median" in r:
            cancel = "returns once stopped + released" if r["cancel_until_stopped"] else "waits for the whole teardown"
            print(f"  P2 baseline: container stopped running after {r['baseline']:.3f}s (median; the figure), "
                  f"removed after {r['baseline_removed_median']:.3f}s; cancel {cancel}; containers still running "
                  f"when cancel returned: {len(r['still_running'])} of {r['runs'] + 1} (warm-up included). The "
                  f"Cumulus figure is cancel -> returned and container seen stopped on the worker; cancel itself "
                  f"returned after {r['cumulus_returned_median']:.3f}s (median, "
                  f"{r['cumulus_returned_median'] / r['baseline']:.2f}x)")
        if r.get("phases"):
            phases.print_table(r["phases_title"], r["phases"])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each side per metric (default 7)")
    parser.add_argument("--only", choices=["p1", "p2"], help="run one metric only")
    args = parser.parse_args(argv)
    results = trio.run(measure, args.runs, args.only)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
