"""The in-job ``cumulus.client``: only what a job needs to call class instances (no SDK, no network).

``remote_class`` holds the handles (``_restore``, the name a pickled handle is rebuilt with, and ``instance``),
``callref`` the CallRef a call returns and ``get``; the transport is ``cumulus._calls``.
"""

from .callref import CallRef, get
from .remote_class import InstanceHandle, instance

__all__ = ["CallRef", "InstanceHandle", "get", "instance"]
