"""WorkerService's drain half: DrainWorker, ActivateWorker, RemoveWorker (admin)."""

from __future__ import annotations


class DrainMethods:
    """Mixed into :class:`~cumulus.rpc.workers_servicer.WorkerServicer` (which sets ``self._api``)."""
