"""Who may call: the server interceptor that checks every RPC's bearer token, and the caller it found.

Every RPC except the open ones (Cumulus's own ``HealthCheck``, the standard ``grpc.health.v1`` and reflection
services, and a joining host's ``RegisterWorker``/``CompleteJoin``, which carry a join token instead) must carry ``authorization: Bearer <token>`` metadata naming a token the
:class:`~cumulus.actors.tokens.Credentials` know; otherwise it ends with ``UNAUTHENTICATED`` and a message saying
how to get a token, before any handler runs. The handler reads the caller with :func:`current_caller` (set per
RPC, in the RPC's own task). A supervisor started ``--insecure`` has no credentials: every caller is the local
admin.

The interceptor also guards decoding: a request that is not a valid protobuf message of the method's type ends
with ``INVALID_ARGUMENT`` (grpc itself would answer ``UNKNOWN`` or ``INTERNAL``), and counts every call by method
and status code (``cumulus_rpcs_total``; unary calls are timed too).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from cumulus import metrics as metrics_module
from cumulus.identity import LOCAL_ADMIN, Caller

OPEN_METHODS = frozenset({
    "/cumulus.v1.OrchestratorService/HealthCheck",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    # A joining host has no API token: its bearer is its join token, checked by the handler itself
    # (cumulus.rpc.join_servicer) against the JoinTokenRegistry.
    "/cumulus.v1.WorkerService/RegisterWorker",
    "/cumulus.v1.WorkerService/CompleteJoin",
})
OPEN_PREFIXES = ("/grpc.reflection.",)
NO_TOKEN = ("this supervisor needs a token: send 'authorization: Bearer <token>' metadata (the CLI and SDK take "
            "it from $CUMULUS_TOKEN or the client config, ~/.config/cumulus/config.yaml); an admin makes one with "
            "`cumulus token create NAME`")
BAD_TOKEN = "the token is not valid (unknown or revoked); ask an admin for a new one (`cumulus token create NAME`)"
BAD_SCHEME = "the authorization metadata must be 'Bearer <token>'"

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("cumulus_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the RPC being handled: None for an anonymous call of an open method."""
    return _caller.get()


class _Undecodable:
    """What the guarded deserializer returns for bytes that are not a message of the expected type."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _guarded(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError, RuntimeError) as error:
            return _Undecodable(error)

    return decode


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's token against ``credentials`` (an object with ``caller_for(secret) -> Caller | None``);
    ``credentials=None`` lets every call in as the local admin (``--insecure``).

    A refused call is answered from its metadata alone, before its request is read: a caller without a token
    cannot hold a server slot by never sending a body. ``max_calls`` bounds the calls of the closed methods in
    progress at once (beyond it: RESOURCE_EXHAUSTED); the open ones (health) do not count, so the server's own,
    larger limit keeps room for them."""

    def __init__(self, credentials: Any | None, *, max_calls: int | None = None,
                 metrics: metrics_module.Metrics = metrics_module.OFF) -> None:
        self._credentials = credentials
        self._max_calls = max_calls
        self._metrics = metrics
        self.in_progress = 0

    def _caller(self, method: str, metadata: Any) -> tuple[Caller | None, str]:
        """The caller and, when the call must be refused, why (empty when it may go on)."""
        if self._credentials is None:
            return LOCAL_ADMIN, ""
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if header is None:
            return None, NO_TOKEN
        scheme, _, secret = str(header).partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None, BAD_SCHEME
        caller = self._credentials.caller_for(secret.strip())
        return caller, "" if caller is not None else BAD_TOKEN

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        is_open = details.method in OPEN_METHODS or details.method.startswith(OPEN_PREFIXES)
        caller, refusal = self._caller(details.method, details.invocation_metadata)
        tally = _Tally(self._metrics, details.method.rsplit("/", 1)[-1])
        if is_open:
            return _wrapped(handler, caller, None, tally)
        if refusal:
            tally.done(grpc.StatusCode.UNAUTHENTICATED.name)
            return _refused(handler, grpc.StatusCode.UNAUTHENTICATED, refusal)
        if self._max_calls is not None and self.in_progress >= self._max_calls:
            tally.done(grpc.StatusCode.RESOURCE_EXHAUSTED.name)
            return _refused(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the supervisor is serving {self.in_progress} calls, its limit "
                            f"(grpc.max_concurrent_rpcs); retry shortly, or follow fewer jobs at once")
        return _wrapped(handler, caller, self, tally)


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class _Tally:
    """Counts one call of ``method`` by the status it ended with."""

    __slots__ = ("metrics", "method", "started")

    def __init__(self, metrics: metrics_module.Metrics, method: str) -> None:
        self.metrics, self.method, self.started = metrics, method, time.perf_counter()

    def done(self, code: str) -> None:
        self.metrics.rpcs.labels(self.method, code).inc()

    def ended(self, context: grpc.aio.ServicerContext, error: BaseException | None, *, timed: bool = False) -> None:
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            name = code.name
        elif isinstance(code, int):
            name = _CODE_NAMES.get(code, "UNKNOWN")
        else:
            name = "OK" if error is None else "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"
        self.done(name)
        if timed:
            self.metrics.rpc_seconds.labels(self.method).observe(time.perf_counter() - self.started)


def _refused(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler that answers ``code`` at once, without reading the request (request-streaming on this side)."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # an async generator, as a streaming handler is

    if handler.unary_stream is not None or handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, response_serializer=handler.response_serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=handler.response_serializer)


def _wrapped(handler: Any, caller: Caller | None, counter: AuthInterceptor | None, tally: _Tally) -> Any:
    """The same method with the caller set, decoding guarded, its end tallied, and (``counter``) counted while it
    runs."""
    decode = _guarded(handler.request_deserializer)

    async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid message of this method's type "
                                f"({type(request.error).__name__}); use the Cumulus SDK or the stubs generated "
                                f"from proto/cumulus/v1/cumulus.proto")
        _caller.set(caller)

    if handler.unary_unary is not None:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if counter is not None:
                counter.in_progress += 1
            error: BaseException | None = None
            try:
                await check(request, context)
                return await handler.unary_unary(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                if counter is not None:
                    counter.in_progress -= 1
                tally.ended(context, error, timed=True)

        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=decode,
                                                   response_serializer=handler.response_serializer)
    if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
        async def written(request: Any, context: grpc.aio.ServicerContext) -> None:  # writes with context.write
            if counter is not None:
                counter.in_progress += 1
            error: BaseException | None = None
            try:
                await check(request, context)
                await handler.unary_stream(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                if counter is not None:
                    counter.in_progress -= 1
                tally.ended(context, error)

        return grpc.unary_stream_rpc_method_handler(written, request_deserializer=decode,
                                                    response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if counter is not None:
                counter.in_progress += 1
            error: BaseException | None = None
            try:
                await check(request, context)
                async for item in handler.unary_stream(request, context):
                    yield item
            except BaseException as raised:
                error = raised
                raise
            finally:
                if counter is not None:
                    counter.in_progress -= 1
                tally.ended(context, error)

        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=decode,
                                                    response_serializer=handler.response_serializer)
    if handler.stream_stream is not None:  # server reflection
        async def bidi(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            _caller.set(caller)
            # grpc's own request iterator is a Cython async generator, which Trio's async generator hooks (this
            # loop runs inside Trio) cannot take: read the requests with context.read() instead.
            async def read() -> Any:
                while (request := await context.read()) is not grpc.aio.EOF:
                    yield request

            error: BaseException | None = None
            try:
                async for item in handler.stream_stream(read(), context):
                    yield item
            except BaseException as raised:
                error = raised
                raise
            finally:
                tally.ended(context, error)

        return grpc.stream_stream_rpc_method_handler(bidi, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)
    return handler  # stream-unary: Cumulus has none
