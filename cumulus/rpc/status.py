"""Mapping of Cumulus errors to gRPC status codes (the only place that knows both)."""

from __future__ import annotations

import grpc

from cumulus import errors

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unsatisfiable, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
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


def error_from_rpc(error: grpc.RpcError, address: str) -> errors.CumulusError:
    """The exception a client raises for a failed RPC to the supervisor at ``address``.

    Like :func:`error_for`, plus what only the client knows: an unreachable supervisor names its address, and a
    request over the server's message limit is a :class:`~cumulus.errors.PackageTooLarge`.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE and any(w in details.lower() for w in ("ssl", "handshake", "tls")):
        return errors.SupervisorUnavailable(
            f"TLS with the supervisor at {address} failed ({details}); the client trusts the CA named by `ca` in "
            f"its config (~/.config/cumulus/config.yaml, written by `cumulus local up`); a supervisor started "
            f"--insecure needs `insecure: true` (or CUMULUS_INSECURE=1) instead")
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.SupervisorUnavailable(
            f"no Cumulus supervisor reachable at {address} ({details or 'unavailable'}); start one with "
            f"`cumulus supervisor`, or point the client at it with --address / CUMULUS_ADDRESS")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.SupervisorUnavailable(f"the supervisor at {address} did not answer in time ({details})")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details.lower():
        return errors.PackageTooLarge(
            f"the request is bigger than the supervisor at {address} accepts ({details}); pass big data by "
            f"reference (a path or URL the job reads) instead of as an argument")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_ms = dict(error.trailing_metadata() or ()).get("retry-after-ms") if hasattr(
            error, "trailing_metadata") else None
        if retry_ms is not None and str(retry_ms).isdigit():
            return errors.QuotaExceeded(details, retry_after=int(retry_ms) / 1000)
    if code == grpc.StatusCode.CANCELLED:
        return errors.CumulusError(f"the call to {address} was cancelled ({details})")
    return error_for(code, details)
