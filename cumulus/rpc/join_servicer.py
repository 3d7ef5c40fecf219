"""WorkerService's join half: join tokens (admin) and the joining host's RegisterWorker / CompleteJoin."""

from __future__ import annotations


class JoinMethods:
    """Mixed into :class:`~cumulus.rpc.workers_servicer.WorkerServicer` (which sets ``self._api``)."""
