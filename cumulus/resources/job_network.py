"""Job isolation on the worker side: what the supervisor learns and checks about a worker before it gets jobs, and
the Swarm-scoped job network of ``internet`` jobs.

* :func:`probe_worker` - one SSH command per worker connection: the SSH user's ``uid:gid`` (the identity job
  containers run as unless ``containers.user`` overrides it) and the verdict of the worker's isolation check
  (``/opt/cumulus/bin/cumulus-job-network check``, installed by setup-worker.sh). A worker whose check fails gets
  no jobs: the WorkerActor reports it unhealthy with :class:`WorkerNotIsolated`'s text as the reason.
* :func:`ensure_swarm_job_network` - the Swarm-scoped bridge network :data:`JOB_NETWORK` on the manager, made
  ``--config-from`` the per-worker config-only network :data:`JOB_NETWORK_CONFIG` (subnet, bridge name
  ``cumulus-jobs``; created by setup-worker.sh on every worker), so each worker's jobs share that worker's
  filtered bridge.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker
import trio

from cumulus.errors import CumulusError
from cumulus.resources.ssh import SshConnection
from cumulus.resources.swarm_client import SwarmClient, SwarmError
from cumulus.resources.swarm_spec import JOB_NETWORK

JOB_NETWORK_CONFIG = "cumulus-jobs-config"
CHECK_TOOL = "/opt/cumulus/bin/cumulus-job-network"
PROBE_TIMEOUT = 20.0


class WorkerNotIsolated(CumulusError):
    """The worker cannot run jobs safely (its job network filter or container settings are missing or wrong);
    the text says what is wrong and how to fix it. The worker gets no jobs until it passes the check."""


@dataclass(frozen=True)
class WorkerProbe:
    """What one connection learned: ``job_user`` (``uid:gid`` job containers run as) and ``problem`` (empty if
    the worker passed its isolation check, else why it did not)."""

    job_user: str
    problem: str


async def probe_worker(conn: SshConnection, containers_user: str = "") -> WorkerProbe:
    """Ask the worker (one SSH command) for the SSH user's uid:gid and its isolation check's verdict.

    ``containers_user``: the ``containers.user`` override (``uid`` or ``uid:gid``, empty = none). The job's output
    directory is made by the SSH user with mode 0700, so an override whose uid is not the SSH user's is reported as
    a problem (the job could not write its result). Raises :class:`~cumulus.resources.ssh.SshError` if the
    command cannot run at all; a failed check is a :class:`WorkerProbe` with a ``problem``, not an exception.
    """
    res = await conn.run(
        f"id -u; id -g; if [ -x {CHECK_TOOL} ]; then {CHECK_TOOL} check 2>&1; else echo 'missing'; exit 3; fi",
        timeout=PROBE_TIMEOUT, check=False)
    lines = res.stdout.strip().splitlines()
    if len(lines) < 2 or not (lines[0].isdigit() and lines[1].isdigit()):
        raise WorkerNotIsolated(f"isolation probe on {conn.label} answered {res.stdout[-300:]!r}")
    ssh_uid, ssh_gid = int(lines[0]), int(lines[1])
    verdict = " ".join(lines[2:]).strip()
    problem = ""
    if res.exit_status == 3 and verdict == "missing":
        problem = f"job isolation: {CHECK_TOOL} is missing (re-run setup-worker.sh on this worker)"
    elif res.exit_status != 0:
        problem = f"job isolation check failed: {verdict or f'exit status {res.exit_status}'}"
    job_user = f"{ssh_uid}:{ssh_gid}"
    if containers_user:
        uid, _, gid = containers_user.partition(":")
        job_user = f"{uid}:{gid or ssh_gid}"
        if int(uid) != ssh_uid and not problem:
            problem = (f"containers.user {containers_user} is not the SSH user's uid {ssh_uid}: jobs could not "
                       "write their output directory (owned by the SSH user, mode 0700); leave containers.user "
                       "empty or use the SSH user's uid")
    if ssh_uid == 0 and not containers_user and not problem:
        problem = "the SSH user is root: job containers never run as root (set containers.user or use a non-root SSH user)"
    return WorkerProbe(job_user, problem)


def require_isolated(probe: WorkerProbe) -> None:
    """Raise :class:`WorkerNotIsolated` (its text is the worker's health reason) if ``probe`` found a problem."""
    if probe.problem:
        raise WorkerNotIsolated(probe.problem)


async def ensure_swarm_job_network(client: SwarmClient) -> bool:
    """Create :data:`JOB_NETWORK` on the manager if it does not exist (``True`` if it was created). Idempotent and
    safe against a concurrent creator (a conflict is taken as "exists"). Raises :class:`SwarmError` if the
    manager refuses (e.g. it is not a Swarm manager)."""

    def ensure() -> bool:
        api = client.api
        if any(n.get("Name") == JOB_NETWORK for n in api.networks(names=[JOB_NETWORK])):
            return False
        body = {"Name": JOB_NETWORK, "Driver": "bridge", "Scope": "swarm", "CheckDuplicate": True,
                "ConfigFrom": {"Network": JOB_NETWORK_CONFIG}}  # no labels, options nor IPAM: the config has them
        try:
            api._result(api._post_json(api._url("/networks/create"), data=body), True)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return False
            raise
        return True

    try:
        return await trio.to_thread.run_sync(ensure)
    except docker.errors.DockerException as exc:
        raise SwarmError(f"create the job network {JOB_NETWORK}: {exc}") from exc


__all__ = ["CHECK_TOOL", "JOB_NETWORK", "JOB_NETWORK_CONFIG", "WorkerNotIsolated", "WorkerProbe",
           "ensure_swarm_job_network", "probe_worker", "require_isolated"]
