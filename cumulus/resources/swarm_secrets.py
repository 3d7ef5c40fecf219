"""A job's secret env as a Docker Swarm secret: how its values reach the job's container without being stored in
clear anywhere a user of the cluster can read them (not in the service spec's env, which ``docker service
inspect`` and ``docker inspect`` show on the manager and the worker).

:func:`open_secret_env` creates one secret per attempt (its data: the JSON of the mapping; its labels:
``cumulus.supervisor_id``, ``cumulus.job_id`` and ``cumulus.secret=env``) and yields the :class:`SecretEnvRef` that
the job's :class:`~cumulus.resources.swarm_spec.ServiceRequest` references; Swarm keeps it encrypted in its Raft log
and gives it to the task only, as a tmpfs file (``/run/secrets/cumulus-secret-env``). Leaving the block removes it:
shielded, bounded, idempotent (already gone = fine); a removal that fails raises :class:`SwarmError`, which the
owner of the resource records as a leak. The service that references a secret must be removed first (Swarm refuses
to remove a secret in use): the attempt owns the secret before the service, so it is released after it.
:func:`adopt_secret_env` takes charge of the secrets of a re-adopted job; :func:`list_secrets` and
:func:`remove_secret` are what orphan reaping uses. Nothing here logs a value or puts one in an error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Mapping

import docker.errors
import trio

from cumulus.resources.swarm_client import SwarmClient, SwarmError, _label_filter
from cumulus.resources.swarm_spec import LABEL_JOB, LABEL_SUPERVISOR, SERVICE_PREFIX, SecretEnvRef

log = logging.getLogger(__name__)

LABEL_SECRET = "cumulus.secret"
SECRET_KIND_ENV = "env"
MAX_SECRET_NAME = 64


@dataclass(frozen=True)
class SecretInfo:
    """A Swarm secret as listed (its metadata; Swarm never gives its data back)."""

    id: str
    name: str
    labels: dict[str, str]


def secret_name(job_id: str, attempt: int) -> str:
    """``cumulus-<job id>-env-<attempt>``: one per attempt, so that a retry never collides with a secret that an
    earlier attempt failed to remove. A name over Swarm's 64 characters uses a digest of the job id instead (the
    labels still name the job)."""
    name = f"{SERVICE_PREFIX}{job_id}-env-{int(attempt)}"
    if len(name) > MAX_SECRET_NAME:
        name = f"{SERVICE_PREFIX}{hashlib.sha256(job_id.encode()).hexdigest()[:32]}-env-{int(attempt)}"
    return name


async def list_secrets(client: SwarmClient, labels: Mapping[str, str]) -> list[SecretInfo]:
    """The secrets carrying ``labels``. Raises :class:`SwarmError`."""
    found = await client._call("list secrets", "secrets", filters={"label": _label_filter(dict(labels))})
    return [SecretInfo(s["ID"], (s.get("Spec") or {}).get("Name", ""), dict((s.get("Spec") or {}).get("Labels") or {}))
            for s in found]


async def remove_secret(client: SwarmClient, secret_id: str) -> bool:
    """Remove a secret (id or name): ``True`` if removed, ``False`` if there was none. Raises :class:`SwarmError`
    (e.g. a service still references it). Not abandoned on cancellation."""
    try:
        await client._call(f"remove secret {secret_id}", "remove_secret", secret_id, abandon=False)
        return True
    except docker.errors.NotFound:
        return False


async def _remove_job_secrets(client: SwarmClient, job_id: str) -> None:
    """Remove every secret env of ``job_id`` (earlier attempts' included). Raises :class:`SwarmError` naming the
    ones that could not be removed."""
    failed = []
    for secret in await list_secrets(client, {LABEL_JOB: job_id, LABEL_SECRET: SECRET_KIND_ENV}):
        try:
            await remove_secret(client, secret.id)
        except SwarmError as error:
            failed.append(f"{secret.name}: {error}")
    if failed:
        raise SwarmError(f"secret env of {job_id} not removed: {'; '.join(failed)}")


@asynccontextmanager
async def open_secret_env(client: SwarmClient, *, job_id: str, supervisor_id: str, attempt: int,
                          values: Mapping[str, str], remove_timeout: float = 20.0) -> AsyncIterator[SecretEnvRef]:
    """Create the Swarm secret holding ``values`` for attempt ``attempt`` of ``job_id``; yield its reference.

    Secrets of the job that an earlier attempt left (a supervisor restart, a failed removal) are removed first
    (best effort). Creation is not abandoned on cancellation; if it is cancelled or fails after Swarm may have
    accepted it, the secret is removed by name before the error propagates. Leaving the block removes the
    job's secrets (shielded, bounded by ``remove_timeout``); raises :class:`SwarmError` if that fails or times out
    (a leak for the owner to record).
    """
    try:
        await _remove_job_secrets(client, job_id)
    except SwarmError as error:  # still in use by an earlier attempt's service: the reaper gets it later
        log.warning("secret env of an earlier attempt of %s: %s", job_id, error)
    name = secret_name(job_id, attempt)
    labels = {LABEL_SUPERVISOR: supervisor_id, LABEL_JOB: job_id, LABEL_SECRET: SECRET_KIND_ENV}
    data = json.dumps(dict(values), ensure_ascii=False).encode("utf-8", "surrogatepass")
    ref = None
    try:
        created = await client._call(f"create secret {name}", "create_secret", name, data, labels=labels,
                                     abandon=False)
        ref = SecretEnvRef(created["ID"], name)
    except docker.errors.NotFound as exc:
        raise SwarmError(f"create secret {name}: {exc}") from exc
    finally:
        if ref is None:
            with trio.move_on_after(remove_timeout, shield=True):
                try:
                    await remove_secret(client, name)
                except SwarmError:
                    pass
    async with _removed_on_exit(client, job_id, remove_timeout):
        yield ref


@asynccontextmanager
async def adopt_secret_env(client: SwarmClient, *, job_id: str, remove_timeout: float = 20.0
                           ) -> AsyncIterator[None]:
    """Take charge of the secret env of a job an earlier supervisor started: its secrets are removed on exit,
    exactly as :func:`open_secret_env` does (there may be none left: that is fine)."""
    async with _removed_on_exit(client, job_id, remove_timeout):
        yield


@asynccontextmanager
async def _removed_on_exit(client: SwarmClient, job_id: str, remove_timeout: float) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with trio.move_on_after(remove_timeout, shield=True) as removing:
            await _remove_job_secrets(client, job_id)
        if removing.cancelled_caught:
            raise SwarmError(f"secret env of {job_id}: not removed within {remove_timeout:g} s")


__all__ = ["LABEL_SECRET", "SECRET_KIND_ENV", "SecretInfo", "adopt_secret_env", "list_secrets", "open_secret_env",
           "remove_secret", "secret_name"]
