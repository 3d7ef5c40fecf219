"""Client side of Cumulus: the SDK (``remote``, ``get``, ``wait``, ``CumulusClient``, ``JobRef``), packaging a
call as a job, decoding its result, and the CLI job commands.

Submodules are imported lazily, so that ``cumulus.client.packaging`` (used by the supervisor) stays light.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "remote": "cumulus.client.remote",
    "get": "cumulus.client.remote",
    "wait": "cumulus.client.remote",
    "RemoteFunction": "cumulus.client.remote",
    "CumulusClient": "cumulus.client.client",
    "JobRef": "cumulus.client.client",
    "client_for": "cumulus.client.client",
    "JobInfo": "cumulus.client.types",
    "JobUpdate": "cumulus.client.types",
    "CancelResult": "cumulus.client.types",
    "WorkerStatus": "cumulus.client.types",
    "JobFailed": "cumulus.client.types",
    "JobCancelled": "cumulus.client.types",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cumulus.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
