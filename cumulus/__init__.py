"""Cumulus: run Python functions on fractional GPUs of a Docker Swarm.

    import cumulus

    @cumulus.remote(gpu=0.25)
    def add(a, b):
        return a + b

    print(cumulus.get(add.remote(2, 2)))     # 4

The SDK names are imported lazily (``import cumulus`` stays cheap for the supervisor and the CLI).
"""

from __future__ import annotations

from typing import Any

from cumulus._version import __version__

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


def __getattr__(name: str) -> Any:
    module = _SDK.get(name)
    if module is None:
        raise AttributeError(f"module 'cumulus' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
