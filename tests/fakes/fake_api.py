"""FakeSupervisorApi: the supervisor's Python API without Swarm, for tests of the RPC front door and the SDK.

It keeps the real :class:`cumulus.jobs.JobRecord` and "runs" a job by executing the real job runner
(``worker_image/image/runner.py``) in a local subprocess on the job's package (``CUMULUS_CODE_DIR`` /
``CUMULUS_OUTPUT_DIR`` point at a temporary directory), relaying its stdout/stderr lines as log events and its
``result.msgpack`` as the result event. So SDK tests are real end to end except for Swarm, SSH and partitions.

Checkpoints and pause as the real supervisor does them, on one local directory per attempt: the job's env names a
checkpoint directory and a pause file (``CUMULUS_CHECKPOINT_DIR``, ``CUMULUS_PAUSE_FILE``); each ``[cumulus]
checkpoint`` line of its stderr "copies" that checkpoint (kept in memory, a checkpoint event); :meth:`pause` creates
the pause file and stops the job after its grace period unless it returned first (the runner's exit 3), or pauses a
job that does not run yet at once; :meth:`resume` runs it again with its last checkpoint to restore.

Class instances (``JobSpec.instance``) run the real runner too, which serves the instance's methods on a socket;
:meth:`send_call` and :meth:`cancel_call` queue and withdraw calls as :class:`tests.fakes.fake_instances.FakeInstance`
says (one at a time, in order; INSTANCE_DIED once the job ended).

:func:`running_fake_server` serves it with the real gRPC server (``cumulus.rpc.server.serve_grpc``) on loopback,
in a background thread with its own ``trio.run``, so that blocking clients, Trio tests and asyncio tests can all
talk to it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import trio

from cumulus.app import Health
from cumulus.calls import CallKey, CallReply, MethodCall
from cumulus.checkpoint import CHECKPOINT_LINE, checkpoint_name_step
from cumulus.config import Settings
from cumulus.errors import CapacityExhausted, InvalidRequest, NotFound, PermissionDenied, Unsatisfiable, WrongJobState
from cumulus.history import HistoryEvent
from tests.credentials import FixedCredentials, security_overrides
from tests.fakes.fake_instances import FakeInstance
from tests.trio_thread import serving_in_thread
from cumulus.devices import DeviceInfo, WorkerInfo
from cumulus.jobs import CheckpointNote, JobRecord, JobSpec, JobState, Placement, TeardownReport
from cumulus.jobformat import check_gpu_share
from cumulus.usage import GROUPS, UsageRecord, UsageReport, attempt_usage, summarize

RUNNER = Path(__file__).resolve().parents[2] / "worker_image" / "image" / "runner.py"
RUNNER_EXIT_PAUSED = 3  # the runner's exit status for a job that returned after it acknowledged a pause

FAKE_WORKERS = (
    WorkerInfo(node_id="fake-node-1", hostname="fake-w1", ssh_address="127.0.0.1:2201", state="ready",
               healthy=True, devices=(
                   DeviceInfo(0, "Fake GPU 80GB", "gpu", True, 80 * 2**30, "GPU-fake-0"),
                   DeviceInfo(1, "Fake GPU 80GB", "gpu", True, 80 * 2**30, "GPU-fake-1"),
               )),
    WorkerInfo(node_id="fake-node-2", hostname="fake-w2", ssh_address="127.0.0.1:2202", state="down",
               healthy=False, reason="fake: node is down"),
)


@dataclass
class _Job:
    record: JobRecord
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancelled_by_user: bool = False
    attempt_scope: trio.CancelScope | None = None  # the current attempt's (a pause past its grace cancels it)
    pausing: bool = False  # a pause was asked and the job is not PAUSED yet
    pause_file: Path | None = None  # the running attempt's: created by a pause request
    resumed: trio.Event = field(default_factory=trio.Event)
    checkpoint: tuple[int, bytes] | None = None  # the newest one "copied" (step, bytes): the next attempt's


class FakeSupervisorApi:
    """The SupervisorApi contract (submit/get/cancel/pause/resume/list_jobs/list_workers/health/settings), faked.

    ``start_delay`` keeps each job QUEUED for that many seconds before it runs (to observe progress or cancel
    a queued job). ``calls`` records the API methods called, for assertions.
    """

    def __init__(self, settings: Settings, nursery: trio.Nursery, workdir: Path, *, start_delay: float = 0.0,
                 workers: tuple[WorkerInfo, ...] = FAKE_WORKERS) -> None:
        self.settings = settings
        self._nursery = nursery
        self._workdir = Path(workdir)
        self.start_delay = start_delay
        self.workers = workers
        self.jobs: dict[str, _Job] = {}
        self.history: dict[str, list[HistoryEvent]] = {}
        self._by_key: dict[str, str] = {}
        self._ids = itertools.count(1)
        self.calls: list[str] = []
        self.cancels_until_stopped: list[bool] = []  # each cancel's until_stopped, as the servicer passed it
        self.usage_records: list[UsageRecord] = []  # one per job that ran (tests may add their own)
        self.instances: dict[str, FakeInstance] = {}  # the class instances' calls, by job id

    # ---- the API ------------------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, caller: Any = None) -> JobRecord:
        self.calls.append("submit")
        await trio.lowlevel.checkpoint()
        if spec.idempotency_key and spec.idempotency_key in self._by_key:
            return self.jobs[self._by_key[spec.idempotency_key]].record
        check_gpu_share(spec.gpu)
        biggest = max((len(w.devices) for w in self.workers), default=0)
        if spec.whole_devices > biggest:
            raise Unsatisfiable(f"gpu={spec.gpu:g} asks for {spec.whole_devices} whole devices; the largest worker "
                                f"has {biggest} (fake cluster)")
        if spec.max_queue_seconds == 1 and self.start_delay > 1:
            raise CapacityExhausted("no device free now and max_queue_seconds=1 (fake cluster)")
        job_id = f"fj{next(self._ids):03d}{uuid.uuid4().hex[:5]}"
        record = JobRecord(job_id, spec)
        record.queue_position = 1 if self.start_delay else 0
        self.history[job_id] = []
        record.on_history = self.history[job_id].append  # the fake's journal of job histories
        record.announce()  # QUEUED, as the real supervisor does
        job = _Job(record)
        self.jobs[job_id] = job
        if spec.instance:
            self.instances[job_id] = FakeInstance(record)
        if spec.idempotency_key:
            self._by_key[spec.idempotency_key] = job_id
        self._nursery.start_soon(self._run, job)
        return record

    async def get(self, job_id: str, caller: Any = None) -> JobRecord:
        self.calls.append("get")
        await trio.lowlevel.checkpoint()
        try:
            return self.jobs[job_id].record
        except KeyError:
            raise NotFound(f"no job {job_id!r} (fake supervisor)") from None

    async def describe(self, job_id: str, caller: Any = None) -> tuple[JobRecord, list[HistoryEvent]]:
        self.calls.append("describe")
        record = await self.get(job_id)
        return record, list(self.history[job_id])

    async def cancel(self, job_id: str, caller: Any = None, until_stopped: bool = False) -> tuple[JobRecord, bool]:
        self.calls.append("cancel")
        self.cancels_until_stopped.append(until_stopped)
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (fake supervisor)")
        was_running = not job.record.state.terminal
        if was_running:
            job.cancelled_by_user = True
            job.scope.cancel()
        await (job.record.halted if until_stopped else job.record.torn_down).wait()
        return job.record, was_running

    async def pause(self, job_id: str, grace: float = 0.0, caller: Any = None) -> tuple[JobRecord, bool]:
        """As the real API: ask the job to pause and wait until it is PAUSED or has ended; the record and whether
        its job was running (asked, with ``grace`` seconds to return, 0: ``jobs.pause_grace``) or not (paused at
        once). WrongJobState for a job that has ended; a second pause asks nothing more."""
        self.calls.append("pause")
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (fake supervisor)")
        record = job.record
        if record.state.terminal or job.cancelled_by_user:
            raise WrongJobState(f"job {job_id} has ended ({record.state.value}) or is being cancelled: there is "
                                "nothing to pause (fake supervisor)")
        was_running = False
        if record.state is not JobState.PAUSED and not job.pausing:
            job.pausing = True
            if record.state is JobState.RUNNING and job.pause_file is not None and job.attempt_scope is not None:
                was_running = True
                job.pause_file.write_text("pause\n")
                record.add_message(f"asked to pause: it has {grace or self.settings.jobs.pause_grace:g} s to return")
                self._nursery.start_soon(self._stop_after_grace, job.attempt_scope,
                                         grace or self.settings.jobs.pause_grace)
            elif job.attempt_scope is not None:
                job.attempt_scope.cancel()  # not running yet: paused at once (else its next attempt sees pausing)
        async for _ in record.events(replay_logs=False):
            if record.state is JobState.PAUSED or record.state.terminal:
                break
        return record, was_running

    async def resume(self, job_id: str, caller: Any = None) -> JobRecord:
        """As the real API: queue a PAUSED job again (from its last checkpoint); its record. WrongJobState for a
        job that is not PAUSED, or has used its whole duration."""
        self.calls.append("resume")
        await trio.lowlevel.checkpoint()
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (fake supervisor)")
        record = job.record
        if record.state is not JobState.PAUSED:
            raise WrongJobState(f"job {job_id} is {record.state.value}, not PAUSED: only a paused job can be resumed "
                                "(fake supervisor)")
        if record.ran_seconds >= record.spec.duration:
            raise WrongJobState(f"job {job_id} has used its whole duration ({record.spec.duration} s) (fake "
                                "supervisor)")
        record.attempt += 1
        record.queue_position = 1 if self.start_delay else 0
        record.set_state(JobState.QUEUED, "resumed")
        job.resumed.set()
        return record

    async def list_jobs(self, include_finished: bool = True, caller: Any = None) -> list[JobRecord]:
        self.calls.append("list_jobs")
        await trio.lowlevel.checkpoint()
        return [j.record for j in self.jobs.values() if include_finished or not j.record.state.terminal]

    async def list_workers(self) -> list[WorkerInfo]:
        self.calls.append("list_workers")
        await trio.lowlevel.checkpoint()
        return list(self.workers)

    async def usage(self, since: float | None = None, by: str = "user", caller: Any = None) -> UsageReport:
        """As the real API: the jobs that ran here (and ``usage_records`` a test added), the caller's own unless
        it is an admin (or None)."""
        self.calls.append("usage")
        await trio.lowlevel.checkpoint()
        if by not in GROUPS:
            raise InvalidRequest(f"cannot group usage by {by!r} (fake supervisor)")
        owner = None if caller is None or caller.admin else caller.name
        return summarize(self.usage_records, by=by, prices=self.settings.usage.prices,
                         currency=self.settings.usage.currency, since=since, owner=owner)

    async def send_call(self, call: MethodCall, *, caller: Any = None) -> Callable[[], Awaitable[CallReply]]:
        """As the real API: queue a method call at its instance; the wait for its reply (never raises). NotFound,
        PermissionDenied (another owner's job), InvalidRequest (a function's job) refuse it."""
        self.calls.append("send_call")
        await trio.lowlevel.checkpoint()
        instance = self._instance(call.job_id, caller)
        return instance.send(call)

    async def cancel_call(self, job_id: str, key: CallKey, *, caller: Any = None) -> None:
        """As the real API: withdraw a call not sent to the instance yet (it ends CANCELLED); else nothing."""
        self.calls.append("cancel_call")
        await trio.lowlevel.checkpoint()
        self._instance(job_id, caller).cancel(key)

    def _instance(self, job_id: str, caller: Any) -> FakeInstance:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (fake supervisor)")
        owner = job.record.spec.owner
        if owner and caller is not None and not caller.may_see(owner):
            raise PermissionDenied(f"job {job_id} is not yours (fake supervisor)")
        instance = self.instances.get(job_id)
        if instance is None:
            raise InvalidRequest(f"job {job_id} runs a function, not a class instance (fake supervisor)")
        return instance

    async def health(self) -> Health:
        await trio.lowlevel.checkpoint()
        active = sum(1 for j in self.jobs.values() if not j.record.state.terminal)
        return Health(serving=True, supervisor_id=self.settings.supervisor_id,
                      workers_ready=sum(1 for w in self.workers if w.healthy), jobs_active=active)

    # ---- running a job --------------------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        record = job.record
        released: list[str] = []
        try:
            with job.scope:
                while True:  # an attempt; then, if it was paused, the wait for its resume
                    exit_code = None
                    with trio.move_on_after(max(record.spec.duration - record.ran_seconds, 1.0)) as deadline:
                        with trio.CancelScope() as job.attempt_scope:
                            if job.pausing:  # asked between its attempts
                                job.attempt_scope.cancel()
                            exit_code = await self._lifecycle(job, released)
                        job.attempt_scope = None
                    if deadline.cancelled_caught:
                        record.add_message(f"duration of {record.spec.duration} s reached")
                        record.set_state(JobState.FAILED, "timeout")
                    if record.state.terminal:
                        break
                    self._paused(job, "returned after the pause request" if exit_code == RUNNER_EXIT_PAUSED
                                 else "paused before it ran" if record.running_at is None
                                 else "did not return within its grace period: stopped at its last checkpoint")
                    await job.resumed.wait()
                    job.resumed = trio.Event()
            if job.scope.cancelled_caught or job.cancelled_by_user:
                record.set_state(JobState.CANCELLED, "cancelled by user")
        except Exception as error:  # noqa: BLE001 - the fake's own failure becomes an infrastructure failure
            record.add_message(f"fake supervisor error: {type(error).__name__}: {error}")
            record.set_state(JobState.FAILED, "infrastructure")
        finally:
            instance = self.instances.get(record.job_id)
            if instance is not None:
                instance.die(f"instance {record.job_id} has ended ({record.state.value}"
                             f"{': ' + record.reason if record.reason else ''})")
            usage = attempt_usage(record, started_at=record.running_at, ended_at=record.finished_at,
                                  queued_at=record.submitted_at)
            if usage is not None:
                self.usage_records.append(usage)
            record.set_torn_down(TeardownReport(released=tuple(reversed(released))))

    def _paused(self, job: _Job, reason: str) -> None:
        """The attempt is over (its process gone): the job is PAUSED, holding nothing, until resumed."""
        record = job.record
        now = time.time()
        if record.running_at is not None:
            record.ran_seconds += now - record.running_at
            usage = attempt_usage(record, started_at=record.running_at, ended_at=now, queued_at=record.submitted_at)
            if usage is not None:
                self.usage_records.append(usage)
        record.running_at = None
        job.pausing, job.pause_file = False, None
        record.queue_position = 0
        record.set_state(JobState.PAUSED, reason)

    @staticmethod
    async def _stop_after_grace(attempt: trio.CancelScope, grace: float) -> None:
        await trio.sleep(grace)
        attempt.cancel()  # a no-op once that attempt is over

    async def _lifecycle(self, job: _Job, released: list[str]) -> int | None:
        """Run one attempt; its exit status (None if it never ran). Sets COMPLETED/FAILED when it ended by itself;
        a paused job (exit 3) is left for :meth:`_run`."""
        record = job.record
        if self.start_delay:
            record.add_message("queued at position 1")
            await trio.sleep(self.start_delay)
        record.queue_position = 0
        record.set_state(JobState.SCHEDULING)
        worker = self.workers[0]
        record.placement = Placement(worker=worker.hostname, node_id=worker.node_id, device_index=0,
                                     share=min(record.spec.gpu, 1.0),
                                     device_model=worker.devices[0].name if worker.devices else "",
                                     is_gpu=bool(worker.devices) and worker.devices[0].is_gpu)
        released.append("reservation")
        record.add_message(f"placed on {worker.hostname} device 0")
        record.set_state(JobState.CREATING_PARTITION)
        record.partition_id = f"fake-part-{record.job_id}"
        released.append("partition")
        jobdir = Path(tempfile.mkdtemp(prefix=f"{record.job_id}-", dir=self._workdir))
        (jobdir / "code").mkdir()
        (jobdir / "output").mkdir()
        (jobdir / "code" / "package.zip").write_bytes(record.spec.package)
        released.append("files")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
        env.update(record.spec.env)
        checkpoints = jobdir / "output" / "checkpoints"
        job.pause_file = jobdir / "output" / ".pause"
        env.update({"CUMULUS_CHECKPOINT_DIR": str(checkpoints), "CUMULUS_PAUSE_FILE": str(job.pause_file),
                    "CUMULUS_CHECKPOINT_MAX_BYTES": str(self.settings.jobs.max_checkpoint_mb << 20)})
        if job.checkpoint is not None:  # a later attempt starts from the last checkpoint "copied"
            step, data = job.checkpoint
            (jobdir / "code" / "checkpoint.restore").write_bytes(data)
            env.update({"CUMULUS_CHECKPOINT_RESTORE": str(jobdir / "code" / "checkpoint.restore"),
                        "CUMULUS_CHECKPOINT_RESTORE_STEP": str(step)})
            record.note_checkpoint(CheckpointNote(step, len(data), restored=True), 1)
        env.update({"CUMULUS_CODE_DIR": str(jobdir / "code"), "CUMULUS_OUTPUT_DIR": str(jobdir / "output"),
                    "CUMULUS_WORK_DIR": str(jobdir), "CUMULUS_PIP_CACHE": str(jobdir / "no-pip-cache"),
                    "CUMULUS_PARTITION_ID": record.partition_id, "CUMULUS_DEVICE_INDEX": "0",
                    "CUMULUS_GPU_FRACTION": f"{record.spec.gpu:g}", "PYTHONUNBUFFERED": "1",
                    "CUMULUS_MAX_PACKAGE_BYTES": str(self.settings.jobs.max_package_mb * 2**20)})
        record.service_id = f"fake-svc-{record.job_id}"
        process = await trio.lowlevel.open_process([sys.executable, str(RUNNER)], env=env, cwd=str(jobdir),
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
        released.append("service")
        record.set_state(JobState.RUNNING)
        try:
            async with trio.open_nursery() as serving:
                instance = self.instances.get(record.job_id)
                if instance is not None:  # its calls go to the runner's socket while the process runs
                    serving.start_soon(instance.serve, jobdir / "output")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._relay, record, process.stdout, "stdout")
                    nursery.start_soon(self._relay, record, process.stderr, "stderr", job, checkpoints)
                code = await process.wait()
                serving.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
        result = jobdir / "output" / "result.msgpack"
        if code == RUNNER_EXIT_PAUSED and not result.exists():
            return code  # it returned after the pause request
        if result.exists():
            record.set_result(result.read_bytes())
        if code == 0:
            record.set_state(JobState.COMPLETED)
        elif code == 1:
            record.set_state(JobState.FAILED, "user_exception")
        else:
            record.set_state(JobState.FAILED, "infrastructure" if result.exists() else f"exit status {code}")
        return code

    @staticmethod
    def _copy_checkpoint(job: _Job, folder: Path, line: str) -> None:
        """A ``[cumulus] checkpoint`` line: keep that checkpoint (the store of the real supervisor) and say so."""
        match = CHECKPOINT_LINE.match(line)
        if match is None:
            return
        try:
            data = (folder / match.group(1)).read_bytes()
        except FileNotFoundError:  # pruned by a newer one already: its own line follows
            return
        job.checkpoint = checkpoint_name_step(match.group(1)), data
        job.record.note_checkpoint(CheckpointNote(job.checkpoint[0], len(data)), 1)

    async def _relay(self, record: JobRecord, stream: Any, name: str, job: _Job | None = None,
                     checkpoints: Path | None = None) -> None:
        pending = b""
        async with stream:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    if job is not None and checkpoints is not None:
                        self._copy_checkpoint(job, checkpoints, text)
                    record.add_log(name, text)
        if pending:
            record.add_log(name, pending.decode("utf-8", "replace"))


# ---- serving it ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeServer:
    address: str
    api: FakeSupervisorApi
    settings: Settings


@contextlib.contextmanager
def running_fake_server(workdir: Path | None = None, *, start_delay: float = 0.0,
                        **settings_overrides: Any) -> Iterator[FakeServer]:
    """Serve a FakeSupervisorApi over real gRPC on 127.0.0.1 (a thread with its own Trio run) for the block.

    ``settings_overrides`` are dotted keys with ``_`` for ``.`` after the section: ``jobs_max_package_mb=1``.
    """
    from cumulus.config import load_settings
    from cumulus.rpc.server import serve_grpc

    overrides = {}
    for key, value in settings_overrides.items():
        section, _, leaf = key.partition("_")
        overrides[f"{section}.{leaf}"] = value
    port = free_port()
    overrides["grpc.listen"] = f"127.0.0.1:{port}"
    overrides.update(security_overrides())
    settings = load_settings(environ={}, overrides=overrides)
    own_dir = tempfile.TemporaryDirectory(prefix="cumulus-fake-") if workdir is None else None
    root = Path(own_dir.name) if own_dir else Path(workdir)

    async def serve(ready: Callable[[Any], None]) -> None:
        async with trio.open_nursery() as nursery:
            api = FakeSupervisorApi(settings, nursery, root, start_delay=start_delay)
            address = await nursery.start(lambda task_status: serve_grpc(
                api, settings.grpc.listen, security=settings.security, credentials=FixedCredentials(),
                max_message_bytes=settings.grpc.max_message_mb * 2**20, task_status=task_status))
            ready(FakeServer(address, api, settings))

    try:
        with serving_in_thread(serve, name="fake-supervisor") as server:
            yield server
    finally:
        if own_dir is not None:
            own_dir.cleanup()


__all__ = ["FAKE_WORKERS", "FakeServer", "FakeSupervisorApi", "free_port", "running_fake_server"]
