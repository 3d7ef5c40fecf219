"""Client side of Cumulus: the SDK (``remote``, ``get``, ``wait``, ``CumulusClient``, ``JobRef``), packaging a
call as a job, decoding its result, and the CLI job commands. The supervisor never imports this package: what
both sides share (the job format) is :mod:`cumulus.jobformat`.

Modules: ``remote`` (``@remote``, ``get``, ``wait``), ``client`` (``CumulusClient``: connection and RPCs),
``job_request`` (the JobSubmission of a call), ``jobref`` (``JobRef``), ``remote_class`` (``@remote`` on a class:
``RemoteClass``, ``InstanceHandle``), ``callref`` (``CallRef``, a method call's future), ``call_stream`` (the
stream that carries method calls), ``aio`` (the SDK from asyncio or Trio code), ``options`` (``normalize_options``),
``packaging`` (building a package), ``collect`` (which modules are the caller's), ``runtime_env`` (what
``py_modules``, ``working_dir`` and ``files`` ship), ``results`` (decoding a job's outcome), ``types`` (what the RPCs
return), ``cli``/``cli_submit``/``cli_flags``/``cli_output``/``health`` (the CLI job commands). Submodules are imported lazily, so that
``import cumulus`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # real names for type checkers; loaded on first use at run time
    from cumulus.client.client import CumulusClient, client_for
    from cumulus.client.callref import CallRef
    from cumulus.client.jobref import JobRef
    from cumulus.client.remote_class import InstanceHandle, RemoteClass, instance, kill
    from cumulus.client.remote import RemoteFunction, get, remote, wait
    from cumulus.client.types import (CancelResult, JobCancelled, JobDescription, JobFailed, JobHistoryEvent, JobInfo,
                                      JobUpdate, WorkerStatus)

_EXPORTS = {
    "remote": "cumulus.client.remote",
    "get": "cumulus.client.remote",
    "wait": "cumulus.client.remote",
    "RemoteFunction": "cumulus.client.remote",
    "RemoteClass": "cumulus.client.remote_class",
    "InstanceHandle": "cumulus.client.remote_class",
    "instance": "cumulus.client.remote_class",
    "kill": "cumulus.client.remote_class",
    "CallRef": "cumulus.client.callref",
    "CumulusClient": "cumulus.client.client",
    "JobRef": "cumulus.client.jobref",
    "client_for": "cumulus.client.client",
    "JobInfo": "cumulus.client.types",
    "JobUpdate": "cumulus.client.types",
    "CancelResult": "cumulus.client.types",
    "WorkerStatus": "cumulus.client.types",
    "JobDescription": "cumulus.client.types",
    "JobHistoryEvent": "cumulus.client.types",
    "JobFailed": "cumulus.client.types",
    "JobCancelled": "cumulus.client.types",
}

__all__ = sorted(_EXPORTS)


def _load(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cumulus.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


if not TYPE_CHECKING:
    __getattr__ = _load
