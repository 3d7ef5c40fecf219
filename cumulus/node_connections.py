"""The open connection to each worker node, by node id: where a job finds its node's backend (re-exported by
:mod:`cumulus.backends`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from cumulus.errors import RequestRejected

if TYPE_CHECKING:
    from cumulus.backends import NodeBackend


class WorkerUnavailable(RequestRejected):
    """The worker is not healthy (node not Ready, or SSH down) and takes no new jobs now."""


class NodeConnections:
    """The open connection to each worker node, by node id: the door a job uses to reach its node.

    Each entry is written only by the WorkerActor that owns that connection (:meth:`serving`, for as long as the
    connection is up) and read by jobs (:meth:`get`). Like the Swarm client, a connection is shared by every job
    on its node; only its owner opens, probes and closes it.
    """

    def __init__(self) -> None:
        self._open: dict[str, NodeBackend] = {}

    @contextmanager
    def serving(self, node_id: str, backend: NodeBackend) -> Iterator[None]:
        self._open[node_id] = backend
        try:
            yield
        finally:
            if self._open.get(node_id) is backend:
                del self._open[node_id]

    def get(self, node_id: str, hostname: str = "") -> NodeBackend:
        """The node's connection; WorkerUnavailable while there is none."""
        backend = self._open.get(node_id)
        if backend is None:
            raise WorkerUnavailable(f"worker {hostname or node_id} is not connected")
        return backend
