"""Mapping of Cumulus errors to gRPC status codes (the only place that knows both)."""

from __future__ import annotations

import grpc

from cumulus import errors

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unsatisfiable, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.CapacityExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RequestRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ActorDied, grpc.StatusCode.UNAVAILABLE),
    (errors.SupervisorGaveUp, grpc.StatusCode.UNAVAILABLE),
]


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC code for ``error``; INTERNAL for anything Cumulus did not raise on purpose."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode, message: str) -> errors.CumulusError:
    """The client-side exception for a failed RPC (the inverse of :func:`status_for`)."""
    for kind, mapped in _CODES:
        if mapped == code and issubclass(kind, errors.RequestRejected):
            return kind(message)
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.SupervisorUnavailable(message)
    return errors.CumulusError(f"{code.name}: {message}")
