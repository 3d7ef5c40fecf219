"""The in-job half of cumulus inside a job container; the SDK is not here.

/opt/cumulus/jobapi is on the job's sys.path (the runner puts it there), so a job function that calls
``cumulus.checkpoint.save(...)``, ``cumulus.checkpoint.load()`` or ``cumulus.should_pause()`` (pickled by reference
on the client) finds them in any image. ``checkpoint.py`` is a byte-identical copy of the package's
``cumulus/checkpoint.py`` (tests/test_checkpoint_copy.py).

A job may also call the methods of class instances: a handle passed to it (made by ``C.remote()`` on the client,
pickled with the job's arguments) is rebuilt as ``cumulus.client.remote_class.InstanceHandle``, and
``cumulus.instance(job_id)`` makes one; ``cumulus.get(h.method.remote(...))``, ``except cumulus.ActorDied`` /
``cumulus.CallCancelled`` read as on the client (the other errors: ``cumulus.errors``). The calls go through a
Unix socket the job serves to the supervisor (``cumulus._calls``: its docstring is the contract).

Importing it needs the standard library only (cloudpickle and msgpack, the runner's, on the first call). Relative
imports only: nothing under worker_image/ imports ``cumulus`` absolutely.
"""

from . import checkpoint, errors
from .checkpoint import should_pause
from .client.callref import get
from .client.remote_class import instance
from .errors import ActorDied, CallCancelled

__all__ = ["ActorDied", "CallCancelled", "checkpoint", "errors", "get", "instance", "should_pause"]
