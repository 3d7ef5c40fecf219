"""The raw Swarm baseline of P1, P2 and P4: what a script does with docker-py alone on the local cluster, with no
Cumulus in between (:class:`RawSwarm`; blocking, run it in a thread from Trio).

It creates a job's service the way the supervisor does - the worker image by id, ``node.id==`` placement, init,
restart condition none, no network, the runner command and stop grace, the package prepared on the host under
``<jobs_dir>/bench-raw-*/`` and bind-mounted - and then: P1, polls the task every :data:`RAW_POLL` s until it is
complete and reads its logs; P2, ``service rm`` of a running one and the time until its container stops / is
removed on the worker's own dockerd (polled every :data:`GONE_POLL` s). ``log_relay.py`` follows its logs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402
from docker.types import ContainerSpec, Mount, Placement, RestartPolicy, ServiceMode, TaskTemplate  # noqa: E402

from cumulus.client.packaging import decode_result  # noqa: E402
from cumulus.resources.swarm import CODE_MOUNT, DEFAULT_COMMAND, OUTPUT_MOUNT, TERMINAL_STATES  # noqa: E402

RAW_POLL = 0.02  # the raw P1 loop's task poll: what a plain script would use (shared/bench/raw_swarm_baseline.py)
GONE_POLL = 0.02  # how often the worker's dockerd is asked whether a container stopped / is gone
TIMEOUT = 60.0


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
        """P1 baseline: seconds from start (package written on the host) to the task complete and its logs read.
        The result file is read only after the clock stopped, as a check: a plain loop gets its answer from the
        logs."""
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
                time.sleep(RAW_POLL)
            logs = b"".join(self.api.service_logs(service_id, stdout=True, stderr=True, follow=False))
            elapsed = time.perf_counter() - start
            # Untimed checks: the task's outcome, its logs, and the result file (a plain loop would not read it).
            result = job_dir / "output" / "result.msgpack"
            assert state == "complete" and b"job finished" in logs and result.exists(), \
                (state, task and task["Status"], result.exists(), logs[-800:])
            assert decode_result(result.read_bytes()).value == 4
        finally:
            self._cleanup(service_id, job_dir)
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
