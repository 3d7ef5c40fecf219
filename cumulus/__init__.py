"""Cumulus: run Python functions on fractional GPUs of a Docker Swarm.

    import cumulus

    @cumulus.remote(gpu=0.25)
    def add(a, b):
        return a + b

    print(cumulus.get(add.remote(2, 2)))     # 4

``@cumulus.remote`` on a class runs its instance as one job: ``h = Counter.remote()``, then
``cumulus.get(h.incr.remote())``; ``cumulus.kill(h)`` stops it, ``cumulus.instance(job_id)`` is a handle from an id.

Inside a job, ``cumulus.checkpoint.save(obj)`` / ``cumulus.checkpoint.load()`` and ``cumulus.should_pause()``
(:mod:`cumulus.checkpoint`; harmless outside a job) keep a long job's progress across retries and pauses.

The SDK names are imported lazily (``import cumulus`` stays cheap for the supervisor and the CLI: about 5 ms,
against some 170 ms for grpc, protobuf and cloudpickle); type checkers see them as the plain imports below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cumulus._version import __version__

if TYPE_CHECKING:
    from cumulus import checkpoint as checkpoint
    from cumulus.checkpoint import should_pause as should_pause
    from cumulus.client.client import CumulusClient as CumulusClient
    from cumulus.client.callref import CallRef as CallRef
    from cumulus.client.client import JobRef as JobRef
    from cumulus.client.remote import get as get
    from cumulus.client.remote import remote as remote
    from cumulus.client.remote import wait as wait
    from cumulus.client.remote_class import InstanceHandle as InstanceHandle
    from cumulus.client.remote_class import instance as instance
    from cumulus.client.remote_class import kill as kill
    from cumulus.errors import ActorDied as ActorDied
    from cumulus.errors import CallCancelled as CallCancelled
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
    "kill": "cumulus.client.remote_class",
    "instance": "cumulus.client.remote_class",
    "InstanceHandle": "cumulus.client.remote_class",
    "CallRef": "cumulus.client.callref",
    "ActorDied": "cumulus.errors",
    "CallCancelled": "cumulus.errors",
    "should_pause": "cumulus.checkpoint",
}
_SUBMODULES = {"checkpoint": "cumulus.checkpoint"}  # `import cumulus` then `cumulus.checkpoint.save(...)`

__all__ = ["__version__", *sorted([*_SDK, *_SUBMODULES])]


if not TYPE_CHECKING:  # hidden from type checkers, so that they flag unknown names (cumulus.remtoe)

    def __getattr__(name: str) -> Any:
        module = _SDK.get(name)
        submodule = _SUBMODULES.get(name)
        if module is None and submodule is None:
            raise AttributeError(f"module 'cumulus' has no attribute {name!r}")
        import importlib

        value = importlib.import_module(submodule) if submodule else getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
