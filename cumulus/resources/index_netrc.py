"""A job owner's credentials for a private package index, on their way to pip: a netrc file that only the
requirements installer sees, as a Docker Swarm secret made for one install.

:func:`netrc_bytes` writes the file (one ``machine`` line for the index's host, login and password quoted as
Python's :mod:`netrc` reads them); :func:`open_install_netrc` creates the Swarm secret holding it (labels:
``cumulus.supervisor_id``, ``cumulus.secret=index-netrc``, ``cumulus.install_for_job``; never ``cumulus.job_id``,
so the job's own secret env cleanup and task watch never see it) and removes it on exit. The installer's service
references it as the file :data:`NETRC_PATH` (owned by the installer's uid, mode 0400) and gets ``NETRC`` set to
that path, which pip's vendored requests reads (``requests.utils.get_netrc_auth``): the credentials are in no
service spec, env value, label, command line or log, and the job's container never gets the secret. The service
must be removed before the secret (Swarm refuses to remove a secret in use): the caller nests the installer inside.

A secret left by a crashed supervisor carries its ``cumulus.supervisor_id`` and no live job: the next start's
orphan reaping removes it. Nothing here logs the credentials or puts them in an error message.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Protocol
from urllib.parse import urlsplit

import docker.errors
import trio

from cumulus.resources.swarm_client import SwarmClient, SwarmError
from cumulus.resources.swarm_secrets import LABEL_SECRET, remove_secret
from cumulus.resources.swarm_spec import LABEL_SUPERVISOR, SecretEnvRef

log = logging.getLogger(__name__)

NETRC_FILE = "cumulus-index-netrc"
NETRC_PATH = f"/run/secrets/{NETRC_FILE}"
SECRET_KIND_NETRC = "index-netrc"
LABEL_INSTALL_FOR_JOB = "cumulus.install_for_job"  # = requirements_install.LABEL_FOR_JOB


class Credential(Protocol):
    """What is needed of :class:`cumulus.index_credentials.IndexCredential` (resources import no journal)."""

    username: str
    password: str


def _quoted(value: str) -> str:
    """``value`` as one netrc token: in double quotes, ``"`` and ``\\`` escaped with a backslash (Python's netrc
    reads that since 3.10; every worker image has a newer Python). Control characters are refused before."""
    if not value.isprintable():
        raise ValueError("a netrc value must be printable (no line breaks)")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def netrc_bytes(index_url: str, credential: Credential) -> bytes:
    """The netrc file for ``index_url``'s host (pip looks credentials up by host, without the port)."""
    host = urlsplit(index_url).hostname
    if not host:
        raise ValueError("the index URL has no host")
    return f"machine {host} login {_quoted(credential.username)} password {_quoted(credential.password)}\n".encode()


@asynccontextmanager
async def open_install_netrc(client: SwarmClient, *, name: str, supervisor_id: str, job_id: str, index_url: str,
                             credential: Credential | None, remove_timeout: float = 20.0
                             ) -> AsyncIterator[SecretEnvRef | None]:
    """Yield the reference of a new Swarm secret ``name`` holding the netrc for ``index_url`` (None, and nothing
    made, when ``credential`` is None). Leaving the block removes it: shielded, bounded by ``remove_timeout``; a
    removal that fails is logged (the next start's orphan reaping removes it). Raises :class:`SwarmError` when it
    cannot be created."""
    if credential is None:
        yield None
        return
    labels = {LABEL_SUPERVISOR: supervisor_id, LABEL_SECRET: SECRET_KIND_NETRC, LABEL_INSTALL_FOR_JOB: job_id}
    ref = None
    try:
        try:
            created = await client._call(f"create secret {name}", "create_secret", name,
                                         netrc_bytes(index_url, credential), labels=labels, abandon=False)
            ref = SecretEnvRef(created["ID"], name)
        except docker.errors.NotFound as exc:
            raise SwarmError(f"create secret {name}: {type(exc).__name__}") from None
        yield ref
    finally:
        with trio.move_on_after(remove_timeout, shield=True) as removing:
            try:
                await remove_secret(client, ref.id if ref is not None else name)
            except SwarmError as error:
                log.warning("index netrc secret %s not removed: %s", name, error)
        if removing.cancelled_caught:
            log.warning("index netrc secret %s: removal not confirmed within %g s", name, remove_timeout)


__all__ = ["NETRC_FILE", "NETRC_PATH", "SECRET_KIND_NETRC", "netrc_bytes", "open_install_netrc"]
