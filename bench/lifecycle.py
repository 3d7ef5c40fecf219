"""P1/P2: a job's life through Cumulus vs the same work done directly on Docker Swarm, on the local cluster.

    python bench/lifecycle.py [--runs N] [--only p1|p2]      (root; `cumulus local up` first)

P1  submit -> result of a trivial job (2+2, gpu=0.5) through ``open_supervisor``, vs raw Swarm: docker-py on the
    manager socket creates a service with the same image (by id), placement (``node.id==``), init, restart
    condition none, no network, stop grace and runner command, on an equivalent package prepared on the host
    under ``<jobs_dir>/bench-raw-*/``; polls the task every 0.1 s (the supervisor's watcher interval here) until it
    is complete, reads the logs (``service_logs``) and the result file; then removes the service (not timed).
    Goal <= 1.10x.
P2  cancel -> container stopped and partition released (``await sup.cancel``, which returns after teardown) of a
    RUNNING job that sleeps 60 s, vs raw ``service rm`` -> container gone, seen on the worker's own dockerd
    (polled every 20 ms). After each Cumulus cancel, the worker's dockerd is asked whether the container is gone.
    Goal <= 0.3x.

Runs alternate between Cumulus and the baseline (the order flips every run) so that machine noise hits both alike;
one untimed warm-up of each comes first. Prints a table (metric, medians, ratio, goal) and returns it from
:func:`main` as a list of dicts for an aggregating ``python -m bench``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402
from docker.types import ContainerSpec, Mount, Placement, RestartPolicy, ServiceMode, TaskTemplate  # noqa: E402

from cumulus.app import open_supervisor  # noqa: E402
from cumulus.client.packaging import build_package, decode_result  # noqa: E402
from cumulus.config import load_settings  # noqa: E402
from cumulus.jobs import JobRecord, JobSpec, JobState  # noqa: E402
from cumulus.local.state import load_cluster  # noqa: E402
from cumulus.resources.swarm import CODE_MOUNT, DEFAULT_COMMAND, OUTPUT_MOUNT, TERMINAL_STATES  # noqa: E402

POLL = 0.1  # the supervisor's task-watcher interval in this bench (cluster.poll_interval)
GONE_POLL = 0.02  # how often the worker's dockerd is asked whether a container is gone
TIMEOUT = 60.0


def add(a, b):
    return a + b


def sleeper(seconds):
    import time

    time.sleep(seconds)
    return seconds


# ---------------------------------------------------------------------------------------------- raw Swarm
class RawSwarm:
    """The baseline: what a script would do with docker-py alone (blocking; run it in a thread)."""

    def __init__(self, desc: dict, stop_grace: float) -> None:
        self.desc = desc
        self.stop_grace = stop_grace
        self.jobs_dir = Path(desc.get("jobs_dir", "/var/lib/cumulus/jobs"))
        self.api = docker.APIClient(base_url=f"unix://{desc['manager_socket']}", version="auto", timeout=60)
        self.workers = {n["node_id"]: docker.APIClient(base_url=f"unix://{n['docker_socket']}", version="auto",
                                                       timeout=60)
                        for n in desc["nodes"] if n["role"] == "worker"}

    def close(self) -> None:
        for client in (self.api, *self.workers.values()):
            client.close()

    def _prepare(self, package: bytes) -> tuple[str, Path]:
        name = f"bench-raw-{secrets.token_hex(6)}"
        job_dir = self.jobs_dir / name
        code, out = job_dir / "code", job_dir / "output"
        job_dir.mkdir(mode=0o755)
        code.mkdir(mode=0o755)
        out.mkdir()
        os.chmod(out, 0o777)
        (code / "package.zip").write_bytes(package)
        os.chmod(code / "package.zip", 0o444)
        os.chmod(code, 0o555)
        return name, job_dir

    def _create(self, name: str, job_dir: Path, node_id: str) -> str:
        env = {"CUMULUS_JOB_ID": name, "CUMULUS_PARTITION_ID": "none", "CUMULUS_DEVICE_INDEX": "0",
               "CUMULUS_GPU_FRACTION": "0.5", "NVIDIA_VISIBLE_DEVICES": "void"}
        container = ContainerSpec(
            image=self.desc["image_id"], command=list(DEFAULT_COMMAND),
            env=[f"{k}={v}" for k, v in sorted(env.items())], labels={"cumulus.bench": name},
            mounts=[Mount(CODE_MOUNT, str(job_dir / "code"), type="bind", read_only=True),
                    Mount(OUTPUT_MOUNT, str(job_dir / "output"), type="bind", read_only=False)],
            stop_grace_period=int(self.stop_grace * 1e9), init=True,
        )
        template = TaskTemplate(container_spec=container,
                                restart_policy=RestartPolicy(condition="none", delay=0, max_attempts=0),
                                placement=Placement(constraints=[f"node.id=={node_id}"]), networks=None)
        res = self.api.create_service(template, name=f"cumulus-{name}", labels={"cumulus.bench": name},
                                      mode=ServiceMode("replicated", replicas=1))
        return res["ID"]

    def _task(self, service_id: str) -> dict | None:
        try:
            tasks = self.api.tasks(filters={"service": service_id})
        except docker.errors.NotFound:  # the service is removed: so are its tasks, once Swarm dropped them
            return None
        return tasks[0] if tasks else None

    def _cleanup(self, service_id: str | None, job_dir: Path) -> None:
        if service_id is not None:
            try:
                self.api.remove_service(service_id)
            except docker.errors.NotFound:
                pass
            deadline = time.monotonic() + TIMEOUT
            while self._task(service_id) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        if job_dir.exists():
            os.chmod(job_dir / "code", 0o755)
            shutil.rmtree(job_dir, ignore_errors=True)

    def containers(self, node_id: str, service_id: str, running_only: bool = False) -> list[dict]:
        return self.workers[node_id].containers(all=not running_only,
                                                filters={"label": f"com.docker.swarm.service.id={service_id}"})

    def submit_to_result(self, node_id: str, package: bytes) -> float:
        """P1 baseline: seconds from start to logs and result read."""
        service_id, job_dir = None, Path("/nonexistent")
        start = time.perf_counter()
        try:
            name, job_dir = self._prepare(package)
            service_id = self._create(name, job_dir, node_id)
            deadline = time.monotonic() + TIMEOUT
            while True:
                task = self._task(service_id)
                state = task and task["Status"]["State"]
                if state in TERMINAL_STATES:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw task did not finish: {task and task['Status']}")
                time.sleep(POLL)
            logs = b"".join(self.api.service_logs(service_id, stdout=True, stderr=True, follow=False))
            envelope = (job_dir / "output" / "result.msgpack").read_bytes()
            elapsed = time.perf_counter() - start
        finally:
            self._cleanup(service_id, job_dir)
        assert state == "complete" and b"job finished" in logs, (state, logs[-500:])
        assert decode_result(envelope).value == 4
        return elapsed

    def rm_to_gone(self, node_id: str, package: bytes) -> tuple[float, float]:
        """P2 baseline: (seconds from ``service rm`` until the container stopped running, until it is gone)."""
        service_id, job_dir = None, Path("/nonexistent")
        try:
            name, job_dir = self._prepare(package)
            service_id = self._create(name, job_dir, node_id)
            deadline = time.monotonic() + TIMEOUT
            while not self.containers(node_id, service_id, running_only=True):
                if time.monotonic() > deadline:
                    raise TimeoutError("raw container never ran")
                time.sleep(GONE_POLL)
            time.sleep(0.3)  # let the runner start its function, as Cumulus's RUNNING job has
            start = time.perf_counter()
            self.api.remove_service(service_id)
            stopped = None
            while True:
                containers = self.containers(node_id, service_id)
                if stopped is None and not any(c["State"] == "running" for c in containers):
                    stopped = time.perf_counter() - start
                if not containers:
                    gone = time.perf_counter() - start
                    break
                if time.perf_counter() - start > TIMEOUT:
                    raise TimeoutError("raw container not removed")
                time.sleep(GONE_POLL)
            return stopped, gone
        finally:
            self._cleanup(service_id, job_dir)


# ------------------------------------------------------------------------------------------------ Cumulus
def worker_containers(raw: RawSwarm, node_id: str, job_id: str, running_only: bool = False) -> list[dict]:
    return raw.workers[node_id].containers(all=not running_only, filters={"label": f"cumulus.job_id={job_id}"})


async def wait_state(record: JobRecord, state: JobState) -> None:
    with trio.fail_after(TIMEOUT):
        async for event in record.events(replay_logs=False):
            if event.state is state:
                return
    raise RuntimeError(f"{record.job_id} ended ({record.state.value} {record.reason!r}) before {state.value}")


async def cumulus_submit_to_result(sup, package: bytes) -> tuple[float, str]:
    start = time.perf_counter()
    record = await sup.submit(JobSpec(package=package, gpu=0.5, duration=60))
    await wait_state(record, JobState.COMPLETED)
    elapsed = time.perf_counter() - start
    assert record.result is not None and decode_result(record.result).value == 4
    with trio.fail_after(TIMEOUT):
        await record.torn_down.wait()
    return elapsed, record.placement.node_id


async def cumulus_cancel(sup, raw: RawSwarm, package: bytes) -> float:
    record = await sup.submit(JobSpec(package=package, gpu=0.5, duration=120))
    await wait_state(record, JobState.RUNNING)
    node_id = record.placement.node_id
    with trio.fail_after(TIMEOUT):
        while not await trio.to_thread.run_sync(worker_containers, raw, node_id, record.job_id, True):
            await trio.sleep(GONE_POLL)
    await trio.sleep(0.3)  # as for the baseline
    start = time.perf_counter()
    with trio.fail_after(TIMEOUT):
        await sup.cancel(record.job_id)
    elapsed = time.perf_counter() - start
    left = await trio.to_thread.run_sync(worker_containers, raw, node_id, record.job_id)
    if left:
        print(f"  note: {record.job_id}: container still on the worker when cancel returned: "
              f"{[c['State'] for c in left]}", file=sys.stderr)
    assert record.state is JobState.CANCELLED and record.teardown is not None and not record.teardown.leaked
    return elapsed


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


def row(metric: str, ours: list[float], theirs: list[float], goal: float, **extra: Any) -> dict:
    c, b = statistics.median(ours), statistics.median(theirs)
    return {"metric": metric, "cumulus": c, "baseline": b, "ratio": c / b, "goal": f"<= {goal:g}x",
            "met": c / b <= goal, "runs": len(ours), "cumulus_all": ours, "baseline_all": theirs, **extra}


async def measure(runs: int, only: str | None) -> list[dict]:
    desc = load_cluster()
    settings = load_settings(environ={}, overrides={
        "supervisor_id": f"bench-{secrets.token_hex(3)}", "cluster.allow_non_gpu_devices": True,
        "cluster.poll_interval": POLL})
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

                async def p1_cumulus() -> float:
                    elapsed, node["id"] = await cumulus_submit_to_result(sup, trivial)
                    return elapsed

                async def p1_raw() -> float:
                    return await trio.to_thread.run_sync(raw.submit_to_result, node["id"], trivial)

                ours, theirs = await alternate(runs, p1_cumulus, p1_raw)
                results.append(row("P1 submit->result (2+2)", ours, theirs, 1.10))

            if only in (None, "p2"):
                sleepy = build_package(sleeper, (60,))
                stopped: list[float] = []

                async def p2_cumulus() -> float:
                    return await cumulus_cancel(sup, raw, sleepy)

                async def p2_raw() -> float:
                    s, gone = await trio.to_thread.run_sync(raw.rm_to_gone, node["id"], sleepy)
                    stopped.append(s)
                    return gone

                ours, theirs = await alternate(runs, p2_cumulus, p2_raw)
                results.append(row("P2 cancel->stopped+released", ours, theirs, 0.3,
                                   baseline_stopped_median=statistics.median(stopped[1:] or stopped)))
    finally:
        raw.close()
    return results


def print_table(results: list[dict]) -> None:
    print(f"{'metric':30} {'cumulus':>10} {'baseline':>10} {'ratio':>7}  goal")
    for r in results:
        print(f"{r['metric']:30} {r['cumulus']:9.3f}s {r['baseline']:9.3f}s {r['ratio']:6.2f}x  {r['goal']}"
              f"{'' if r['met'] else '  (not met)'}")
    for r in results:
        if "baseline_stopped_median" in r:
            print(f"  P2 baseline: container stopped running after {r['baseline_stopped_median']:.3f}s "
                  f"(median), removed after {r['baseline']:.3f}s")


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
