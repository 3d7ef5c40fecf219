"""Method calls on class instances over the wire: one ``CallInstance`` bidi stream per
:class:`~cumulus.client.client.CumulusClient`, shared by all its instance handles, and :func:`send_call`.

Plain blocking gRPC, like the rest of the client: the requests are a generator fed from a queue (grpc's own thread
consumes it), and a daemon thread reads the replies and resolves each :class:`~cumulus.client.callref.CallRef` by
its call id. The stream is opened by the first call of a client, and stays open for the next ones.

Ordering: a call id is taken and its request queued under one lock, so the calls of one thread (of one handle) go
on the stream in the order ``.remote()`` was called; the supervisor runs the calls of one stream to one instance in
the order they came. If the stream breaks (supervisor restart, network, ``client.close()``), every call still
waiting fails with the error the client maps that to (``SupervisorUnavailable``, ...), and the next call opens a new
stream. The token and TLS are the client's channel's, as for every other RPC.
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterator

import grpc

from cumulus.client.callref import CallRef
from cumulus.errors import CumulusError, SupervisorUnavailable
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.status import error_from_rpc

if TYPE_CHECKING:
    from cumulus.client.client import CumulusClient

__all__ = ["CallStream", "send_call"]


class CallStream:
    """One open ``CallInstance`` stream of ``client`` and the calls on it that have not ended."""

    def __init__(self, client: CumulusClient) -> None:
        self.client = client
        self.broken: CumulusError | None = None  # why it ended; no call is sent on it any more
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, CallRef[Any]] = {}
        self._requests: queue.Queue[pb.InstanceCall | None] = queue.Queue()
        self._call = client._stub.CallInstance(self._outgoing())
        threading.Thread(target=self._read, name=f"cumulus-calls-{client.address}", daemon=True).start()

    def send(self, job_id: str, method: str, args: bytes, default_timeout: float | None) -> CallRef[Any] | None:
        """Queue a call; its CallRef, or None if the stream broke meanwhile (send it on a new one)."""
        with self._lock:  # the call id and the place in the queue together: the order of .remote() calls
            if self.broken is not None:
                return None
            call_id = next(self._ids)
            ref: CallRef[Any] = CallRef(self, job_id, method, call_id, default_timeout)
            self._pending[call_id] = ref  # before it is sent: its reply cannot come first
            self._requests.put(pb.InstanceCall(job_id=job_id, call_id=call_id, method=method, args=args))
        return ref

    def cancel(self, ref: CallRef[Any]) -> bool:
        """Ask the supervisor to withdraw ``ref``'s call; False if it has ended already (or the stream did)."""
        with self._lock:
            if self.broken is not None or self._pending.get(ref.call_id) is not ref:
                return False
            self._requests.put(pb.InstanceCall(job_id=ref.job_id, call_id=ref.call_id, cancel=True))
        return True

    def close(self) -> None:
        """End the stream from this side (the calls still waiting fail); the next call opens a new one."""
        self._call.cancel()

    def _outgoing(self) -> Iterator[pb.InstanceCall]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        error: CumulusError
        try:
            for reply in self._call:
                with self._lock:
                    ref = self._pending.pop(reply.call_id, None)
                if ref is not None:  # else a late reply to a call that failed already
                    ref._resolve(reply)
            error = SupervisorUnavailable(f"the supervisor at {self.client.address} ended the stream of method "
                                          f"calls; calls that had not returned may or may not have run")
        except grpc.RpcError as rpc_error:
            if self.client._closed or rpc_error.code() == grpc.StatusCode.CANCELLED:
                error = CumulusError(f"the client of {self.client.address} was closed (or its call stream "
                                     f"cancelled) before the call returned; it may or may not have run")
            else:
                error = error_from_rpc(rpc_error, self.client.address)
        except Exception as other:  # noqa: BLE001 - never die silently: the callers of result() learn it
            error = CumulusError(f"reading method call replies failed: {type(other).__name__}: {other}")
        with self._lock:
            self.broken = error
            pending, self._pending = self._pending, {}
            self._requests.put(None)  # ends the request generator, so grpc's thread that reads it ends too
        for ref in pending.values():
            ref._fail(error)


_streams: weakref.WeakKeyDictionary[CumulusClient, CallStream] = weakref.WeakKeyDictionary()
_streams_lock = threading.Lock()


def stream_for(client: CumulusClient) -> CallStream:
    """``client``'s open call stream, opened now if it has none (or its last one broke)."""
    with _streams_lock:
        stream = _streams.get(client)
        if stream is None or stream.broken is not None:
            if client._closed:
                raise CumulusError(f"the client of {client.address} is closed: make a new one for more calls")
            stream = _streams[client] = CallStream(client)
        return stream


def send_call(client: CumulusClient, job_id: str, method: str, args: bytes,
              default_timeout: float | None = None) -> CallRef[Any]:
    """Send ``method`` with pickled ``args`` (``(args, kwargs)``) to the instance ``job_id`` on ``client``'s call
    stream; its CallRef at once (the call is queued, not yet run)."""
    for _ in range(3):  # a stream that broke between being found and being used: once more on a new one
        stream = stream_for(client)
        ref = stream.send(job_id, method, args, default_timeout)
        if ref is not None:
            return ref
    assert stream.broken is not None
    raise stream.broken
