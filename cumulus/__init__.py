"""Cumulus: run Python functions on fractional GPUs of a Docker Swarm.

    import cumulus

    @cumulus.remote(gpu=0.25)
    def add(a, b):
        return a + b

    print(cumulus.get(add.remote(2, 2)))     # 4

The SDK names are imported lazily (``import cumulus`` stays cheap for the supervisor and the CLI: about 5 ms,
against some 170 ms for grpc, protobuf and cloudpickle); type checkers see them as the plain imports below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cumulus._version import __version__

if TYPE_CHECKING:
    from cumulus.client.client import CumulusClient as CumulusClient
    from cumulus.client.client import JobRef as JobRef
    from cumulus.client.remote import get as get
    from cumulus.client.remote import remote as remote
    from cumulus.client.remote import wait as wait
    from cumulus.errors import JobCancelled as JobCancelled
    from cumulus.errors import JobFailed as JobFailed
    from cumulus.errors import RemoteError as RemoteError

_SDK = {
    "remote": "cumulus.client.remote",
    "get": "cumulus.client.remote",
    "wait": "cumulus.client.remote",
    "CumulusClient": "cumulus.client.client",
    "JobRef": "cumulus.client.client",
    "JobFailed": "cumulus.client.types",
    "JobCancelled": "cumulus.client.types",
    "RemoteError": "cumulus.errors",
}

__all__ = ["__version__", *sorted(_SDK)]


if not TYPE_CHECKING:  # hidden from type checkers, so that they flag unknown names (cumulus.remtoe)

    def __getattr__(name: str) -> Any:
        module = _SDK.get(name)
        if module is None:
            raise AttributeError(f"module 'cumulus' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
