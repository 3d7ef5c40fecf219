"""What a job in a user image (``image=``) needs from Swarm: its reference pinned to a digest, and the worker's runner.

A user image carries nothing of Cumulus. Its job runs the runner of the worker image of the job's Python version,
mounted read-only at :data:`RUNNER_MOUNT` from a named volume on the node (:func:`runner_volume_name`, one per
worker image id): the volume is filled once per node by a one-shot service of the worker image that mounts it
there (Docker copies the image's ``/opt/cumulus`` - the runner, its job-format copy and its own ``lib/`` of
cloudpickle and msgpack - into a new, empty volume), and every job mounts it without copying. The user image is
named by the digest the Swarm manager's engine resolves (:func:`resolve_digest`), so that every node runs the same
bytes whatever the tag says later.
"""

from __future__ import annotations

from typing import Any

import docker.errors
import trio
from docker.types import Mount

from cumulus.resources.image_pull import ImagePullFailed
from cumulus.resources.swarm_client import SwarmClient, SwarmError
from cumulus.resources.swarm_spec import RUNNER_MOUNT

RUNNER_VOLUME_PREFIX = "cumulus-runner-"
LABEL_RUNNER_VOLUME = "cumulus.runner_volume"


class PreparedOnNodes:
    """(node id, image digest or runner volume) already done on a node in this process; one pull at a time per
    node and thing, so jobs placed together do not pull twice."""

    def __init__(self) -> None:
        self._done: set[tuple[str, str]] = set()
        self._locks: dict[tuple[str, str], trio.Lock] = {}

    async def once(self, key: tuple[str, str], prepare: Any) -> bool:
        """Run ``prepare()`` unless done for ``key``; True when it ran."""
        if key in self._done:
            return False
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            if key in self._done:
                return False
            await prepare()
            self._done.add(key)
        self._locks.pop(key, None)
        return True


def runner_volume_name(worker_image_id: str) -> str:
    """The node's volume holding the runner of the worker image ``worker_image_id`` (``sha256:...``)."""
    return RUNNER_VOLUME_PREFIX + worker_image_id.removeprefix("sha256:")[:16]


def runner_volume_mount(name: str, *, fill: bool) -> Mount:
    """The runner volume at :data:`RUNNER_MOUNT`: ``fill`` for the service that fills it from the worker image
    (read-write, copied into while new), else read-only and never copied into (a job's)."""
    return Mount(target=RUNNER_MOUNT, source=name, type="volume", read_only=not fill, no_copy=not fill,
                 labels={LABEL_RUNNER_VOLUME: "true"})


FILLED_MARK = f"{RUNNER_MOUNT}/runner.py"


def fill_check_command() -> tuple[str, ...]:
    """Run in the worker image with the volume mounted: exits 0 once the volume holds the runner."""
    return ("test", "-f", FILLED_MARK)


def python_check_command(minor: str) -> tuple[str, ...]:
    """Run in the user image: exit 0 if its ``python3`` is Python ``minor``, 3 if another version (no python3 at
    all: Swarm fails the task, "executable file not found")."""
    major, _, rest = minor.partition(".")
    return ("python3", "-c", f"import sys; sys.exit(0 if sys.version_info[:2] == ({int(major)}, {int(rest)}) else 3)")


async def resolve_digest(client: SwarmClient, reference: str) -> str:
    """``reference`` (``REGISTRY/PATH[:TAG]``) as ``REGISTRY/PATH@sha256:...``: the manager's engine asks the
    registry (``GET /distribution/.../json``). ImagePullFailed when the registry does not have it or cannot be
    reached, with its answer."""
    try:
        found: dict[str, Any] = await client._call(f"resolve {reference}", "inspect_distribution", reference)
    except docker.errors.NotFound as error:
        raise ImagePullFailed(f"{reference} is not in its registry: {error.explanation or error}") from None
    except SwarmError as error:
        raise ImagePullFailed(f"{reference} could not be looked up in its registry: {error}") from None
    digest = (found.get("Descriptor") or {}).get("digest", "")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise ImagePullFailed(f"the registry gave no digest for {reference} ({found!r:.200})")
    name = reference.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}@{digest}"


__all__ = ["LABEL_RUNNER_VOLUME", "PreparedOnNodes", "RUNNER_MOUNT", "fill_check_command", "python_check_command", "resolve_digest",
           "runner_volume_mount", "runner_volume_name"]
