"""The Cumulus supervisor process: its root supervision tree and the Python API the RPC layer calls.

    async with open_supervisor(settings) as sup:     # the whole tree, started in order
        health = await sup.health()

Tree (children start top to bottom and stop bottom to top)::

    root (one_for_one)
    └── rpc          gRPC server; each RPC becomes calls on the API below
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import trio

from cumulus.config import Settings
from cumulus.supervisor import ChildSpec, Restart, Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    serving: bool
    reason: str = ""
    supervisor_id: str = ""
    workers_ready: int = 0
    jobs_active: int = 0


class SupervisorApi:
    """What clients can ask of a running supervisor. Every method is a Trio coroutine."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root: Supervisor | None = None
        self.listen_address: str | None = None

    async def health(self) -> Health:
        return Health(serving=self.root is not None, supervisor_id=self.settings.supervisor_id)


def build_tree(api: SupervisorApi, *, serve_rpc: bool = True) -> Supervisor:
    settings = api.settings
    children: list[ChildSpec] = []
    if serve_rpc:
        from cumulus.rpc.server import serve_grpc

        async def rpc(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            await serve_grpc(
                api,
                settings.grpc.listen,
                max_message_bytes=settings.grpc.max_message_mb * 1024 * 1024,
                task_status=task_status,
            )

        children.append(ChildSpec("rpc", rpc, Restart.PERMANENT))
    return Supervisor(children, name="root", max_restarts=3, max_seconds=10)


@asynccontextmanager
async def open_supervisor(settings: Settings, *, serve_rpc: bool = True) -> AsyncIterator[SupervisorApi]:
    """Start the whole tree (each child ready before the next) and yield its API; stop it on exit.

    On exit - normal, error or cancellation - children stop in reverse order and release what they own.
    """
    api = SupervisorApi(settings)
    root = build_tree(api, serve_rpc=serve_rpc)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        api.root = root
        api.listen_address = root.whereis("rpc") if serve_rpc else None
        try:
            yield api
        finally:
            api.root = None
            nursery.cancel_scope.cancel()
