"""The supervisor's Prometheus metrics: their names, labels and buckets, and who counts into them.

One :class:`Metrics` per supervisor (``open_supervisor`` makes it), in a registry of its own, served on the HTTP
port's ``/metrics`` (:mod:`cumulus.rpc.http`). Code that counts something asks for the one bound to its task with
:func:`current`: the supervisor binds it around its whole tree, and Trio hands context variables to every task and
worker thread started inside, so actors and resources count without it travelling through their constructors.
Outside a supervisor (unit tests, the SDK) :func:`current` answers :data:`OFF`, which counts nothing.

Two kinds of numbers:

* **Counted as they happen** (counters and histograms): submissions, ends by outcome and reason, retries, the time
  each resource took to acquire and release, job phases, leases, leaks, SSH commands, Docker API calls, RPCs,
  unhandled asyncio errors, device-seconds by user.
* **Read at scrape time** (gauges of "now": jobs by state, queue length and age, workers by state, device shares):
  the HTTP port asks the actors for a snapshot and :meth:`Metrics.set_snapshot` writes it just before the text is
  rendered, so nothing is kept up to date between scrapes.

Labels never carry job ids, token secrets or anything unbounded: users are token names, workers are Swarm nodes,
``resource``/``phase``/``command``/``call`` come from fixed lists in the code.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest

from cumulus._version import __version__

# Seconds: from a few milliseconds (an actor hop, a Docker call on loopback) to an hour in the queue.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)

# The resources a job's attempt owns (cumulus/actors/attempt.py names them) that are phases of its life.
PHASE_OF_RESOURCE = {"reservation": "queue", "partition": "partition", "files": "upload",
                     "requirements": "requirements", "service": "service_create"}
PHASES = ("queue", "placement", "partition", "upload", "requirements", "service_create", "first_log", "run",
          "teardown")


@dataclass(frozen=True)
class DeviceShare:
    worker: str
    device: str  # its index on the worker
    model: str
    is_gpu: bool
    used: float


@dataclass(frozen=True)
class Snapshot:
    """What the supervisor looks like now, gathered from its actors for one scrape."""

    ready: bool
    jobs_by_state: Mapping[str, int]
    queue_length: int
    oldest_queued_seconds: float
    workers_by_state: Mapping[str, int]
    devices: tuple[DeviceShare, ...]
    workers_by_availability: Mapping[str, int] = field(default_factory=dict)


class Metrics:
    """Every metric of one supervisor, registered in :attr:`registry`. ``enabled=False`` makes one that counts
    nothing at all (P3 is measured both ways: bench/RESULTS.md)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry()
        r = self.registry if enabled else None
        make: Any = _make if enabled else _make_off

        self.jobs_submitted = make(Counter, "cumulus_jobs_submitted", "Jobs accepted, by the user (token name) "
                                   "that submitted them", ["user"], r)
        self.jobs_finished = make(Counter, "cumulus_jobs_finished", "Jobs that reached a terminal state, by state "
                                  "and reason (a FailureReason value; 'none' for COMPLETED)",
                                  ["state", "reason", "infrastructure"], r)
        self.job_retries = make(Counter, "cumulus_job_retries", "Attempts that failed and were retried, by reason",
                                ["reason"], r)
        self.checkpoints = make(Counter, "cumulus_checkpoints_copied", "Job checkpoints copied from their worker "
                                "to the checkpoint store", [], r)
        self.checkpoint_bytes = make(Counter, "cumulus_checkpoint_bytes_copied", "Bytes of job checkpoints copied "
                                     "to the checkpoint store", [], r)
        self.job_pauses = make(Counter, "cumulus_job_pauses", "Jobs paused, by how (returned: the job returned "
                               "after should_pause(); stopped: at the end of its grace period; not_running: before "
                               "its container ran)", ["how"], r)
        self.job_phase = make(Histogram, "cumulus_job_phase_seconds", "Time a job's attempt spent in each phase "
                              "of its life", ["phase"], r, buckets=PHASE_BUCKETS)
        self.resource_acquire = make(Histogram, "cumulus_resource_acquire_seconds", "Time to acquire an owned "
                                     "resource (reservation, partition, files, service, ssh connection, ...)",
                                     ["resource"], r, buckets=PHASE_BUCKETS)
        self.resource_release = make(Histogram, "cumulus_resource_release_seconds", "Time to release an owned "
                                     "resource", ["resource"], r, buckets=LATENCY_BUCKETS)
        self.leaks = make(Counter, "cumulus_leaks_found", "Resources found leaked: a release that failed or timed "
                          "out (where=release), or an orphan reaped on a worker (where=orphan)", ["where", "resource"],
                          r)
        self.leases_renewed = make(Counter, "cumulus_leases_renewed", "Partition leases renewed", ["worker"], r)
        self.leases_expired = make(Counter, "cumulus_leases_expired", "Partition leases lost: expired, or their "
                                   "holder died", ["worker", "cause"], r)
        self.ssh_command = make(Histogram, "cumulus_ssh_command_seconds", "SSH commands to workers, by command "
                                "and whether they succeeded", ["command", "ok"], r, buckets=LATENCY_BUCKETS)
        self.docker_call = make(Histogram, "cumulus_docker_api_seconds", "Docker API calls to the Swarm manager, "
                                "by call and whether they succeeded", ["call", "ok"], r, buckets=LATENCY_BUCKETS)
        self.rpcs = make(Counter, "cumulus_rpcs", "gRPC calls handled, by method and status code",
                         ["method", "code"], r)
        self.rpc_seconds = make(Histogram, "cumulus_rpc_seconds", "gRPC unary call latency (streams not included)",
                                ["method"], r, buckets=LATENCY_BUCKETS)
        self.asyncio_errors = make(Counter, "cumulus_asyncio_unhandled_errors", "Errors the asyncio loop under "
                                   "gRPC and asyncssh reported to its exception handler", [], r)
        self.device_seconds = make(Counter, "cumulus_device_seconds", "Device-seconds x share used by finished "
                                   "attempts, by user and device kind (gpu or other)", ["user", "device_kind"], r)
        self.worker_joins = make(Counter, "cumulus_worker_joins", "Joining hosts' register and complete requests, "
                                 "by outcome (registered, joined, or why refused: expired, used, ...)", ["outcome"], r)
        self.job_starts = make(Counter, "cumulus_job_starts", "Attempts started, by path: warm (a warm service took "
                               "the job) or cold (a service created for it)", ["path"], r)
        self.warm_services = make(Gauge, "cumulus_warm_services", "Idle warm services, by worker and whether "
                                  "their container waits for a job (ready) or is starting", ["worker", "state"], r)
        self.warm_made = make(Counter, "cumulus_warm_services_made", "Warm services created", ["worker"], r)
        self.warm_failures = make(Counter, "cumulus_warm_service_failures", "Warm services lost before a job took "
                                  "them (their container ended) or that did not take the job handed to them",
                                  ["worker", "what"], r)
        # Read at scrape time (set_snapshot).
        self.ready = make(Gauge, "cumulus_ready", "1 while the supervisor serves (tree up, journal recovered)", [], r)
        self.jobs = make(Gauge, "cumulus_jobs", "Live jobs by state", ["state"], r)
        self.queue_length = make(Gauge, "cumulus_queue_length", "Jobs waiting for capacity", [], r)
        self.queue_oldest = make(Gauge, "cumulus_queue_oldest_seconds", "How long the job that has waited longest "
                                 "for capacity has waited (0 when none waits)", [], r)
        self.workers = make(Gauge, "cumulus_workers", "Workers by state (ready, preparing, unreachable, down)",
                            ["state"], r)
        self.workers_availability = make(Gauge, "cumulus_workers_by_availability", "Workers by availability "
                                         "(active, draining, drained: cumulus worker drain)", ["availability"], r)
        self.share_used = make(Gauge, "cumulus_device_share_used", "Share of each device reserved by jobs",
                               ["worker", "device", "model", "is_gpu"], r)
        self.share_total = make(Gauge, "cumulus_device_share_total", "Share of each device that jobs may use "
                                "(1 per device)", ["worker", "device", "model", "is_gpu"], r)
        build = make(Gauge, "cumulus_build_info", "The supervisor's version", ["version"], r)
        build.labels(__version__).set(1)
        if enabled:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    # ---- counted as it happens --------------------------------------------------------------------------------

    def resource_acquired(self, what: str, seconds: float) -> None:
        """A ResourceOwner took ``what`` (it reports here: :func:`cumulus.actors.ownership.observed_by`)."""
        self.resource_acquire.labels(what).observe(seconds)
        phase = PHASE_OF_RESOURCE.get(what)
        if phase is not None:
            self.job_phase.labels(phase).observe(seconds)

    def resource_released(self, what: str, seconds: float) -> None:
        self.resource_release.labels(what).observe(seconds)

    def resource_leaked(self, what: str) -> None:
        self.leaks.labels("release", what).inc()

    def lease_lost(self, placement: Any, cause: Any) -> None:
        """A job's partition lease was lost while it ran (``cause``: a LeaseLoss, or None)."""
        self.leases_expired.labels(placement.worker if placement else "", cause.value if cause else "").inc()

    def attempt_used(self, user: str, is_gpu: bool, run_seconds: float, device_seconds: float) -> None:
        """An attempt that ran ended: its run phase, and its device-seconds x share for its owner."""
        self.job_phase.labels("run").observe(run_seconds)
        self.device_seconds.labels(user, "gpu" if is_gpu else "other").inc(device_seconds)

    def phase(self, phase: str, seconds: float) -> None:
        self.job_phase.labels(phase).observe(seconds)

    @contextlib.contextmanager
    def timing(self, histogram: Any, *labels: str) -> Iterator[None]:
        """Observe the block's duration in ``histogram`` with ``labels`` and ``ok="true"|"false"`` last (false
        when it raised, cancellation included)."""
        started = time.perf_counter()
        ok = "false"
        try:
            yield
            ok = "true"
        finally:
            histogram.labels(*labels, ok).observe(time.perf_counter() - started)

    # ---- read at scrape time ----------------------------------------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Write the gauges of "now" from ``snapshot``, dropping label sets that are gone (a removed worker)."""
        self.ready.set(1 if snapshot.ready else 0)
        _set_all(self.jobs, {(state,): n for state, n in snapshot.jobs_by_state.items()})
        self.queue_length.set(snapshot.queue_length)
        self.queue_oldest.set(snapshot.oldest_queued_seconds)
        _set_all(self.workers, {(state,): n for state, n in snapshot.workers_by_state.items()})
        _set_all(self.workers_availability, {(a,): n for a, n in snapshot.workers_by_availability.items()})
        labels = {d: (d.worker, d.device, d.model, "true" if d.is_gpu else "false") for d in snapshot.devices}
        _set_all(self.share_used, {labels[d]: d.used for d in snapshot.devices})
        _set_all(self.share_total, {labels[d]: 1.0 for d in snapshot.devices})

    def render(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


def _set_all(gauge: Any, values: Mapping[tuple[str, ...], float]) -> None:
    gauge.clear()
    for labels, value in values.items():
        gauge.labels(*labels).set(value)


def _make(kind: Any, name: str, documentation: str, labels: list[str], registry: CollectorRegistry,
          **options: Any) -> Any:
    return kind(name, documentation, labels, registry=registry, **options)


class _Off:
    """Stands in for a metric when metrics are off: accepts every update, keeps nothing."""

    def labels(self, *_: Any, **__: Any) -> _Off:
        return self

    def inc(self, *_: Any) -> None:
        pass

    dec = set = observe = inc

    def clear(self) -> None:
        pass

    def time(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


_OFF_METRIC = _Off()


def _make_off(*_: Any, **__: Any) -> _Off:
    return _OFF_METRIC


OFF = Metrics(enabled=False)
_current: ContextVar[Metrics] = ContextVar("cumulus_metrics", default=OFF)


def current() -> Metrics:
    """The metrics of the supervisor this task runs in (:data:`OFF` outside one)."""
    return _current.get()


@contextlib.contextmanager
def bound(metrics: Metrics) -> Iterator[Metrics]:
    """Make ``metrics`` what :func:`current` answers in this task and every task or thread started inside."""
    token = _current.set(metrics)
    try:
        yield metrics
    finally:
        _current.reset(token)


__all__ = ["DeviceShare", "Metrics", "OFF", "PHASES", "Snapshot", "bound", "current"]
