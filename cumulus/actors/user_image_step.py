"""A job attempt's user image step (``image=``): before its partition is created, the image is pinned to a digest,
pulled on the job's node and checked to have a ``python3`` of the job's version, and the node's runner volume is
filled (:mod:`cumulus.resources.user_image`). A missing image, an unreachable registry or a wrong Python fails the
job at once with ``image_unavailable`` (never retried: the same image would fail again), before any partition or
container exists.

Each node pulls and checks an image digest once, and fills a runner volume once, per supervisor process (the Swarm
backend's :class:`~cumulus.resources.user_image.PreparedOnNodes`): later jobs there run by digest at once.

Used by :class:`cumulus.actors.attempt.Attempt`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from cumulus.actors.outcome import JobStopped, Outcome
from cumulus.errors import CumulusError
from cumulus.jobs import FailureReason
from cumulus.resources.image_pull import ImagePullFailed
from cumulus.resources.user_image import (fill_check_command, python_check_command, runner_volume_mount,
                                          runner_volume_name)

log = logging.getLogger(__name__)

PULL_TIMEOUT = 1800.0  # one node's pull of a user image (big CUDA images take minutes)
WRONG_PYTHON_EXIT = 3  # python_check_command's exit status for another version


@dataclass(frozen=True)
class UserImage:
    """What the job's service runs: the image by digest and the node's runner volume."""

    reference: str
    runner_volume: str


async def prepare_user_image(ctx: Any, node_id: str, spec: Any, add_log: Any) -> UserImage:
    """Pin ``spec.image``, make sure it is on ``node_id`` with the right Python, and fill the runner volume of the
    worker image of ``spec.python`` there. Raises :class:`JobStopped` (``image_unavailable``) when it cannot."""
    swarm = ctx.swarm
    prepared = swarm.prepared
    worker_image = ctx.settings.cluster.image_for(spec.python)
    started = time.monotonic()
    try:
        reference = await swarm.resolve_image(spec.image)
        if await prepared.once((node_id, reference), lambda: _pull_and_check(swarm, node_id, reference, spec)):
            add_log("stderr", f"cumulus: pulled {spec.image} as {reference} on its node "
                              f"({time.monotonic() - started:.1f} s)")
        volume = runner_volume_name(worker_image)
        await prepared.once((node_id, volume), lambda: swarm.pull_image(
            node_id, worker_image, timeout=PULL_TIMEOUT, command=fill_check_command(),
            mounts=(runner_volume_mount(volume, fill=True),)))
    except ImagePullFailed as error:
        raise JobStopped(Outcome.failed(FailureReason.IMAGE_UNAVAILABLE, _explain(spec, error), retry=False)) from None
    except CumulusError as error:  # the manager could not be asked: the cluster's failure, retried
        raise JobStopped(Outcome.failed(FailureReason.INFRASTRUCTURE, f"preparing {spec.image}: {error}")) from None
    log.info("job image %s -> %s on %s", spec.image, reference, node_id)
    return UserImage(reference, volume)


async def _pull_and_check(swarm: Any, node_id: str, reference: str, spec: Any) -> None:
    await swarm.pull_image(node_id, reference, timeout=PULL_TIMEOUT, command=python_check_command(spec.python))


def _explain(spec: Any, error: ImagePullFailed) -> str:
    if error.exit_code == WRONG_PYTHON_EXIT:
        return (f"image {spec.image}: its python3 is not Python {spec.python}, the client's version (a function "
                f"pickled by one Python version does not load in another); use an image with Python {spec.python}")
    text = str(error)
    if "executable file not found" in text or "no such file" in text.lower():
        return f"image {spec.image} has no python3 on its PATH; use an image with Python {spec.python} ({text})"
    return f"image {spec.image}: {text}"


__all__ = ["UserImage", "prepare_user_image"]
