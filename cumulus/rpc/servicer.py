"""OrchestratorService: each RPC becomes calls on the supervisor's Python API (run in Trio).

Handlers run on the asyncio loop (grpc.aio) and cross into Trio through :mod:`cumulus.asyncio_bridge`
(:func:`call_trio` for one call, :func:`iterate_trio` to follow a job's events). Errors raised on purpose become a
gRPC status with their message (:mod:`cumulus.rpc.status`); anything else is logged and becomes INTERNAL. No
handler lets an exception take the server down.

Every job handler acts for the caller that :mod:`cumulus.rpc.auth` found for the call's token (the API keeps each
user to their own jobs); token administration needs an admin token. A request's validation (the package's zip included) runs
in a worker thread, so a large package never stalls the supervisor's event loop.

Streams (SubmitJob, WatchJob) follow :meth:`JobRecord.events` until the job is torn down. A client that goes away
mid-stream only ends its own subscription: the job keeps running (cancel it with CancelJob).
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable

import grpc
import trio

from cumulus._version import __version__
from cumulus.asyncio_bridge import call_trio, iterate_trio_batches
from cumulus.config import python_minor_key
from cumulus.errors import CumulusError, InvalidRequest, PermissionDenied, Unauthenticated
from cumulus.identity import Caller, Limits, TokenInfo
from cumulus.rpc import convert
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.auth import NO_TOKEN, current_caller
from cumulus.rpc.instance_stream import serve_instance_calls
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.status import status_for
from cumulus.tracing import TRACE_ID_REPLY_KEY, TRACEPARENT_KEY, trace_id_from

log = logging.getLogger(__name__)

MAX_JOB_ID_LEN = 256
VALIDATION_THREADS = 2
MAX_LINES_PER_MESSAGE = 1000  # log lines per ``logs`` message (each line is at most 64 KiB)


RETRY_AFTER_KEY = "retry-after-ms"


def _retry_after(error: CumulusError) -> tuple[tuple[str, str], ...]:
    """A refusal over a limit says when to retry, also in metadata a program can read (milliseconds)."""
    seconds = getattr(error, "retry_after", None)
    return ((RETRY_AFTER_KEY, str(max(1, round(seconds * 1000)))),) if isinstance(seconds, (int, float)) else ()


def _unary(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: OrchestratorServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except CumulusError as error:
            await context.abort(status_for(error), str(error), trailing_metadata=_retry_after(error))
        except Exception as error:  # a bug: report it to the caller as INTERNAL and keep serving
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")

    return wrapper


def _streaming(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(method)
    async def wrapper(self: OrchestratorServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async with aclosing(method(self, request, context)) as items:
                async for item in items:
                    yield item
        except CumulusError as error:
            await context.abort(status_for(error), str(error), trailing_metadata=_retry_after(error))
        except Exception as error:  # noqa: BLE001 - a bug: INTERNAL, keep serving
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")

    return wrapper


def _job_id(value: str) -> str:
    if not value:
        raise InvalidRequest("job_id is empty; give the id printed when the job was submitted")
    if len(value) > MAX_JOB_ID_LEN or any(not c.isprintable() for c in value):
        raise InvalidRequest(f"job_id {value[:40]!r} is not a job id")
    return value


def _trace_id(context: Any) -> str:
    """The trace id of the call's ``traceparent`` metadata; a new one when it has none, more than one, or an
    invalid one (W3C: a receiver ignores an invalid traceparent rather than failing the request)."""
    values = [value for key, value in (context.invocation_metadata() or ()) if key == TRACEPARENT_KEY]
    return trace_id_from(values[0] if len(values) == 1 else None)


def _caller() -> Caller:
    caller = current_caller()
    if caller is None:  # only open methods run without one; they do not call this
        raise Unauthenticated(NO_TOKEN)
    return caller


def _admin() -> Caller:
    caller = _caller()
    if not caller.admin:
        raise PermissionDenied(f"token {caller.name!r} is not an admin token; token administration needs one")
    return caller


class OrchestratorServicer(cumulus_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, api: Any) -> None:
        self._api = api
        # Package validation's own threads: a burst of big submissions waits here, and never takes the threads
        # that the journal and the Docker calls of running jobs need.
        self._validation = trio.CapacityLimiter(VALIDATION_THREADS)

    async def _follow(self, record: Any, *, replay_logs: bool) -> AsyncIterator[pb.JobEvent]:
        """The record's events as messages; log lines that arrived together go out as one ``logs`` batch (a
        message per line would cost a write per line)."""
        async with aclosing(iterate_trio_batches(lambda: record.events(replay_logs=replay_logs))) as batches:
            async for batch in batches:
                for message in convert.events_to_pb(batch, max_lines=MAX_LINES_PER_MESSAGE):
                    yield message

    @_streaming
    async def SubmitJob(self, request: pb.JobSubmission, context: Any) -> AsyncIterator[pb.JobEvent]:
        caller = _caller()
        validate = functools.partial(convert.spec_from_submission, request, self._api.settings,
                                     trace_id=_trace_id(context))
        spec = await call_trio(functools.partial(trio.to_thread.run_sync, validate, limiter=self._validation))
        record = await call_trio(functools.partial(self._api.submit, spec, caller=caller))
        # The trace id the job has: the one sent, unless the idempotency key named a job made earlier.
        await context.send_initial_metadata(((TRACE_ID_REPLY_KEY, record.spec.trace_id),))
        # The first event names the job at once, whatever the job's actor publishes (and when).
        yield convert.message_event(record.job_id, f"accepted as job {record.job_id}", time.time())
        async with aclosing(self._follow(record, replay_logs=True)) as events:
            async for event in events:
                yield event

    @_streaming
    async def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> AsyncIterator[pb.JobEvent]:
        record = await call_trio(functools.partial(self._api.get, _job_id(request.job_id), caller=_caller()))
        async with aclosing(self._follow(record, replay_logs=request.include_logs)) as events:
            async for event in events:
                yield event

    @_unary
    async def GetJobStatus(self, request: pb.GetJobStatusRequest, context: Any) -> pb.JobStatus:
        record = await call_trio(functools.partial(self._api.get, _job_id(request.job_id), caller=_caller()))
        return convert.status_to_pb(record)

    @_unary
    async def DescribeJob(self, request: pb.DescribeJobRequest, context: Any) -> pb.JobDescription:
        record, events = await call_trio(functools.partial(self._api.describe, _job_id(request.job_id),
                                                           caller=_caller()))
        return convert.description_to_pb(record, events)

    @_unary
    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        record, was_running = await call_trio(functools.partial(self._api.cancel, _job_id(request.job_id),
                                                                caller=_caller(), until_stopped=request.until_stopped))
        reply = pb.CancelJobResponse(status=convert.status_to_pb(record), was_running=was_running)
        if record.teardown is not None:
            reply.teardown.CopyFrom(convert.teardown_to_pb(record.teardown))
        return reply

    @_unary
    async def PauseJob(self, request: pb.PauseJobRequest, context: Any) -> pb.PauseJobResponse:
        record, was_running = await call_trio(functools.partial(
            self._api.pause, _job_id(request.job_id), grace=float(request.grace_seconds), caller=_caller()))
        return pb.PauseJobResponse(status=convert.status_to_pb(record), was_running=was_running)

    @_unary
    async def ResumeJob(self, request: pb.ResumeJobRequest, context: Any) -> pb.ResumeJobResponse:
        record = await call_trio(functools.partial(self._api.resume, _job_id(request.job_id), caller=_caller()))
        return pb.ResumeJobResponse(status=convert.status_to_pb(record))

    @_unary
    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Any) -> pb.ListWorkersResponse:
        caller = _caller()
        workers = await call_trio(self._api.list_workers)
        replies = [convert.worker_to_pb(w) for w in workers]
        if not caller.admin:  # how to reach the workers is for operators only
            for reply in replies:
                reply.ssh_address = ""
        return pb.ListWorkersResponse(workers=replies)

    @_unary
    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        records = await call_trio(functools.partial(self._api.list_jobs, request.include_finished,
                                                    caller=_caller()))
        records = sorted(records, key=lambda r: r.submitted_at)
        if request.limit:
            records = records[-request.limit:]  # the most recent ones, oldest first
        return pb.ListJobsResponse(jobs=[convert.status_to_pb(r) for r in records])

    @_unary
    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        caller = _caller()  # an admin sees every user's usage, anyone else their own
        since, by = convert.usage_query(request)
        report = await call_trio(functools.partial(self._api.usage, since, by, caller=caller))
        return convert.usage_to_pb(report)

    @_unary
    async def HealthCheck(self, request: pb.HealthCheckRequest, context: Any) -> pb.HealthCheckResponse:
        health = await call_trio(self._api.health)
        reply = pb.HealthCheckResponse(
            status=pb.HealthCheckResponse.SERVING if health.serving else pb.HealthCheckResponse.NOT_SERVING,
            reason=health.reason,
            version=__version__,
        )
        if current_caller() is not None:  # anonymous callers learn whether it serves, nothing about the cluster
            reply.supervisor_id = health.supervisor_id
            reply.workers_ready = health.workers_ready
            reply.jobs_active = health.jobs_active
            reply.python_versions.extend(sorted(self._api.settings.cluster.worker_images(), key=python_minor_key))
        return reply

    @_unary
    async def CreateToken(self, request: pb.CreateTokenRequest, context: Any) -> pb.CreateTokenResponse:
        _admin()
        token = request.token
        limits = Limits(token.max_running, token.max_queued, token.max_gpu, token.rate)
        info, secret = await call_trio(functools.partial(self._api.create_token, token.name, admin=token.admin,
                                                         limits=limits))
        return pb.CreateTokenResponse(token=convert.token_to_pb(info), secret=secret)

    @_unary
    async def ListTokens(self, request: pb.ListTokensRequest, context: Any) -> pb.ListTokensResponse:
        _admin()
        tokens = await call_trio(self._api.list_tokens)
        return pb.ListTokensResponse(tokens=[convert.token_to_pb(t) for t in tokens])

    @_unary
    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Any) -> pb.RevokeTokenResponse:
        _admin()
        info = await call_trio(self._api.revoke_token, request.name)
        return pb.RevokeTokenResponse(token=convert.token_to_pb(info))

    async def CallInstance(self, requests: AsyncIterator[pb.InstanceCall], context: Any
                           ) -> AsyncIterator[pb.InstanceReply]:
        """Method calls on class instances (:mod:`cumulus.rpc.instance_stream`); each call ends with one reply."""
        async with aclosing(serve_instance_calls(self._api, requests, _caller(), MAX_JOB_ID_LEN)) as replies:
            async for reply in replies:
                yield reply

    @_unary
    async def RotateToken(self, request: pb.RotateTokenRequest, context: Any) -> pb.RotateTokenResponse:
        _admin()
        info, secret = await call_trio(self._api.rotate_token, request.name)
        return pb.RotateTokenResponse(token=convert.token_to_pb(info), secret=secret)
