"""The image pull service: a one-shot Swarm service pinned to one node whose only purpose is that the node's dockerd
pulls an image (the worker image, from the supervisor's registry) before any job needs it there.

:func:`build_pull_spec` is its spec (pure); :func:`open_pull_service` creates it and always removes it (an async
context manager: shielded, bounded, idempotent removal that waits until its task is gone); :func:`pull_on_node`
runs one pull to its end. The container does nothing (``true``) and is hardened like a job's: a non-root uid, no
capabilities, a read-only root, tiny limits, no network attached; its image is named by digest
(``REGISTRY/cumulus/worker@sha256:...``), which Swarm's executor pulls unless the node has it already.

The service carries the supervisor's label and no ``cumulus.job_id``: a supervisor that crashed mid-pull leaves it,
and its successor's orphan reaping (:class:`~cumulus.actors.cluster.ClusterActor`) removes it.
"""

from __future__ import annotations

import logging
import re
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import docker.errors
import trio
from docker.types import ContainerSpec, Mount, Placement, RestartPolicy, ServiceMode, TaskTemplate

from cumulus.errors import CumulusError
from cumulus.resources.swarm_client import SwarmClient, SwarmError, TaskState
from cumulus.resources.swarm_spec import LABEL_SUPERVISOR

log = logging.getLogger(__name__)

LABEL_ROLE = "cumulus.role"
ROLE_IMAGE_PULL = "image-pull"
LABEL_PULL_NODE = "cumulus.pull_node"
LABEL_PULL_SERVICE = "cumulus.pull_service"  # the pull's tasks are found by it, also once the service is removed
PULL_COMMAND = ("true",)
PULL_USER = "65534:65534"  # nobody: the container runs nothing of note, and never as root
POLL_SECONDS = 0.5
_NODE_ID = re.compile(r"[a-z0-9]{10,64}")
_REFERENCE = re.compile(r"[A-Za-z0-9.\-\[\]:]+(/[a-z0-9._-]+)+@sha256:[0-9a-f]{64}|sha256:[0-9a-f]{64}")


class ImagePullFailed(CumulusError):
    """The node did not get the image, or the image failed its check; the message says why (as far as Swarm tells);
    ``exit_code``: the check's, when it ran and failed."""

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class PullService:
    """What a pull is: the image ``reference`` (by digest, or an image id the node has) pulled on ``node_id``,
    under the service ``name``. ``command`` runs in it once pulled (a check of the image; exit 0: it passed), with
    ``mounts`` (e.g. a named volume that the image's content fills on first use)."""

    name: str
    node_id: str
    reference: str
    supervisor_id: str
    command: tuple[str, ...] = PULL_COMMAND
    mounts: tuple[Mount, ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_SUPERVISOR: self.supervisor_id, LABEL_ROLE: ROLE_IMAGE_PULL, LABEL_PULL_NODE: self.node_id,
                LABEL_PULL_SERVICE: self.name}


def new_pull_service(node_id: str, reference: str, supervisor_id: str, *, command: tuple[str, ...] = PULL_COMMAND,
                     mounts: tuple[Mount, ...] = ()) -> PullService:
    """A pull of ``reference`` on ``node_id``, with a fresh service name (a leftover of a crash never clashes)."""
    return PullService(f"cumulus-pull-{node_id[:12]}-{secrets.token_hex(4)}", node_id, reference, supervisor_id,
                       command, mounts)


def build_pull_spec(pull: PullService) -> dict[str, Any]:
    """The keyword arguments of ``docker.APIClient.create_service`` for ``pull`` (pure). ValueError for a node id or
    reference that is not well formed (a digest reference is required: a tag could change under the pull)."""
    if not _NODE_ID.fullmatch(pull.node_id):
        raise ValueError(f"invalid node id {pull.node_id!r}")
    if not _REFERENCE.fullmatch(pull.reference):
        raise ValueError(f"the image must be named REGISTRY/NAME@sha256:<digest>, got {pull.reference!r}")
    container = ContainerSpec(image=pull.reference, command=list(pull.command), user=PULL_USER, labels=pull.labels,
                              read_only=True, cap_drop=["ALL"], env=["NVIDIA_VISIBLE_DEVICES=void"],
                              mounts=list(pull.mounts) or None)
    container["Privileges"] = {"NoNewPrivileges": True}  # API >= 1.44; older engines run with --no-new-privileges
    template = TaskTemplate(
        container_spec=container,
        restart_policy=RestartPolicy(condition="none", delay=0, max_attempts=0),
        placement=Placement(constraints=[f"node.id=={pull.node_id}"]),
    )
    template["Resources"] = {"Limits": {"NanoCPUs": 100_000_000, "MemoryBytes": 32 << 20, "Pids": 16}}
    return {"task_template": template, "name": pull.name, "labels": pull.labels,
            "mode": ServiceMode("replicated", replicas=1)}


@asynccontextmanager
async def open_pull_service(client: SwarmClient, pull: PullService, *, remove_timeout: float
                            ) -> AsyncIterator[str]:
    """Create the pull service; yield its id. Leaving the block (normally, by an error or by cancellation) removes
    it and waits until its task is gone: shielded, bounded by ``remove_timeout``, logged when not confirmed. A
    create whose answer was lost is removed by name."""
    service_id: str | None = None
    try:
        try:
            created: dict[str, Any] = await client._call(f"create service {pull.name}", "create_service",
                                                         abandon=False, **build_pull_spec(pull))
        except docker.errors.NotFound as exc:
            raise SwarmError(f"create service {pull.name}: {exc}") from exc
        service_id = created["ID"]
        yield service_id
    finally:
        with trio.move_on_after(remove_timeout, shield=True) as removing:
            try:
                await client._call(f"remove service {pull.name}", "remove_service", service_id or pull.name,
                                   abandon=False)
            except docker.errors.NotFound:
                pass
            except SwarmError as exc:
                log.warning("remove image pull service %s: %s", pull.name, exc)
            while service_id is not None and await _left(client, pull):
                await trio.sleep(0.1)
        if removing.cancelled_caught:
            log.warning("image pull service %s: removal not confirmed within %g s", pull.name, remove_timeout)


async def pull_on_node(client: SwarmClient, pull: PullService, *, timeout: float, remove_timeout: float = 30.0
                       ) -> None:
    """Run ``pull`` to its end: the node has the image when this returns. Raises :class:`ImagePullFailed` (the
    task failed or was rejected, with Swarm's reason, or it did not end within ``timeout`` s, with the state it was
    stuck in) or :class:`SwarmError` (the manager could not be asked)."""
    async with open_pull_service(client, pull, remove_timeout=remove_timeout):
        last: TaskState | None = None
        with trio.move_on_after(timeout):
            while True:
                await trio.sleep(POLL_SECONDS)
                tasks = await client.task_states({LABEL_PULL_SERVICE: pull.name})
                if not tasks:
                    continue
                last = max(tasks, key=lambda t: t.timestamp or "")
                if not last.terminal:
                    continue
                if last.state == "complete" and last.exit_code in (0, None):
                    return
                if last.exit_code not in (0, None):
                    raise ImagePullFailed(f"the image's check {list(pull.command)} exited with {last.exit_code}",
                                          exit_code=last.exit_code)
                raise ImagePullFailed(f"the pull task {last.state}: "
                                      f"{last.error or last.message or f'exit code {last.exit_code}'}")
        stuck = "no task yet"
        if last is not None:
            detail = last.error or last.message
            stuck = f"task {last.state}" + (f": {detail}" if detail else "")
        raise ImagePullFailed(f"the pull did not finish within {timeout:g} s ({stuck})")


async def _left(client: SwarmClient, pull: PullService) -> bool:
    """Whether a task of the pull is left (found by its container label: also one of the removed service, until
    its container is gone). True while the manager cannot be asked: it is asked again until the removal's bound."""
    try:
        return bool(await client.task_states({LABEL_PULL_SERVICE: pull.name}))
    except SwarmError:
        return True


__all__ = ["ImagePullFailed", "LABEL_PULL_NODE", "LABEL_PULL_SERVICE", "LABEL_ROLE", "PullService", "ROLE_IMAGE_PULL",
           "build_pull_spec", "new_pull_service", "open_pull_service", "pull_on_node"]
