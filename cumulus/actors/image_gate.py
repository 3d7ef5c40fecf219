"""The worker image gate: a worker takes new jobs only once the worker images (one per Python minor the cluster
serves, ``cluster.images``, else ``cluster.image``; by id) are on its node, so no job is ever placed where its image
is missing, and again after an image upgrade (a supervisor started with other image ids).

:class:`WorkerImages` is made once per supervisor tree and shared by every WorkerActor, which calls
:meth:`WorkerImages.ensure` once connected, before it offers the node for new jobs. A node whose label
``cumulus.worker_image`` already names the images (their ids, sorted, comma-separated) needs nothing. Otherwise the
node is shown "preparing" with the reason "pulling the worker image" (connected: its running jobs are still followed
and re-adopted, so an image upgrade loses none), each image is exported once from the Swarm manager into the
supervisor's image store (:mod:`cumulus.resources.image_store`), and a one-shot pull service pinned to the node
makes its dockerd pull it from the supervisor's registry (``server.http_advertise``, :mod:`cumulus.rpc.http_registry`); then the label is
set. A failure is shown as the worker's reason ("worker image missing: <why>") and tried again with backoff.

Without ``server.http_advertise`` (no registry the workers can reach) the gate is off: the image must be loaded
on every worker by hand (``docker save | docker load``), which is logged once.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import trio

from cumulus.backends import SwarmBackend
from cumulus.config import Settings
from cumulus.errors import CumulusError
from cumulus.resources.image_pull import ImagePullFailed
from cumulus.resources.image_store import ImageStore, check_image_id, image_store_dir, load_image_store
from cumulus.resources.swarm import NodeInfo

log = logging.getLogger(__name__)

LABEL_WORKER_IMAGE = "cumulus.worker_image"
REPOSITORY = "cumulus/worker"  # the one repository the registry serves (cumulus.rpc.http_registry.REPOSITORY)
PULLING = "pulling the worker image"
MISSING = "worker image missing"
PULL_TIMEOUT = 1800.0  # one node's pull, from the pull service's creation to its task's end
RETRY_BACKOFF = (5.0, 15.0, 30.0, 60.0, 120.0)

Report = Callable[[str], Awaitable[None]]  # tells the Scheduler why the node takes no new job yet


class WorkerImageMissing(CumulusError):
    """The worker image could not be brought to a node; the message says why and what to check."""


def gate_off_reason(settings: Settings) -> str:
    """Why the gate is off for these settings ("" when it is on)."""
    images = settings.cluster.worker_images()
    if not images:
        return "cluster.image is not set"
    for image in images.values():
        try:
            check_image_id(image)
        except CumulusError:
            return f"the worker image {image} is a registry reference: the workers pull it from there"
    if not settings.server.http_advertise:
        return "server.http_advertise is not set (no registry address the workers can reach)"
    if not settings.server.http_listen:
        return "server.http_listen is empty (no HTTP port to serve the registry on)"
    if image_store_dir(settings.journal.path) is None:
        return "the journal is in memory (no directory for the image store)"
    return ""


async def open_image_store(settings: Settings) -> ImageStore | None:
    """The supervisor's image store (``images/`` next to the journal), or None when the gate is off."""
    root = image_store_dir(settings.journal.path)
    if gate_off_reason(settings) or root is None:
        return None
    return await load_image_store(root)


class WorkerImages:
    """What every WorkerActor needs to make sure the worker image is on its node (see the module docstring)."""

    def __init__(self, settings: Settings, swarm: SwarmBackend, store: ImageStore | None) -> None:
        self.images = tuple(sorted(set(settings.cluster.worker_images().values())))
        self.image = ",".join(self.images)  # the node label's value once it has them all
        self.registry = settings.server.http_advertise
        self.swarm = swarm
        self.store = store
        off = gate_off_reason(settings) or ("" if store is not None else "the image store is not open")
        self.enabled = not off
        if off:
            log.log(logging.WARNING if self.image else logging.DEBUG, "worker image gate off (%s): the worker image "
                    "%s must be on every worker already (docker save | docker load)", off, self.image or "(none)")

    def needed(self, node: NodeInfo) -> bool:
        return self.enabled and node.labels.get(LABEL_WORKER_IMAGE) != self.image

    async def ensure(self, node_of: Callable[[], NodeInfo], report: Report) -> NodeInfo | None:
        """Return once the node (``node_of()``: its latest description) has the image: at once when its label says
        so (None), else after a pull (the node as relabelled). Meanwhile why the node takes no new job is told
        through ``report(reason)``; a failed pull is reported and tried again with backoff, without end."""
        attempt = 0
        while self.needed(node_of()):
            await report(PULLING)
            try:
                return await self.pull(node_of())
            except Exception as error:  # any failure is a state of the node, reported and retried
                reason = f"{MISSING}: {error}"
                log.warning("worker %s: %s", node_of().hostname, reason)
                await report(reason)
            await trio.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])
            attempt += 1
        return None

    async def pull(self, node: NodeInfo) -> NodeInfo:
        """Bring the image to ``node`` and label it; returns the node as relabelled. Raises
        :class:`WorkerImageMissing`, ``ImageExportError`` or ``SwarmError``."""
        assert self.store is not None
        started = time.monotonic()
        for image in self.images:
            export = await self.store.export(image, self.swarm.save_image, keep=self.images)
            reference = f"{self.registry}/{REPOSITORY}@{export.manifest_digest}"
            asked_at = time.monotonic()
            log.info("worker %s: pulling the worker image %s as %s", node.hostname, image, reference)
            try:
                await self.swarm.pull_image(node.id, reference, timeout=PULL_TIMEOUT)
            except ImagePullFailed as error:
                raise WorkerImageMissing(self._explain(node, error, asked_at)) from error
        relabelled = await self.swarm.update_node(node.id, labels_add={LABEL_WORKER_IMAGE: self.image})
        log.info("worker %s: has the worker image (%.1f s)", node.hostname, time.monotonic() - started)
        return relabelled

    def _explain(self, node: NodeInfo, error: ImagePullFailed, asked_at: float) -> str:
        """Swarm says only that the image is missing; the registry knows whether the node came to ask for it."""
        assert self.store is not None
        if node.address and not self.store.asked_since(node.address, asked_at):
            return (f"{node.hostname} ({node.address}) never asked the registry {self.registry} for the image: "
                    f"it cannot reach {self.registry}, or its dockerd does not trust the supervisor's CA "
                    f"(/etc/docker/certs.d/{self.registry}/ca.crt) ({error})")
        return f"{node.hostname} did not get the image from {self.registry}: {error} (see its dockerd's log)"


__all__ = ["LABEL_WORKER_IMAGE", "MISSING", "PULLING", "WorkerImageMissing", "WorkerImages", "gate_off_reason",
           "open_image_store"]
