"""A job's directory on the worker: ``<jobs_dir>/<job_id>/code`` (the uploaded package, read-only),
``<jobs_dir>/<job_id>/output`` (written by the job container; ``result.msgpack`` is the result envelope) and
``<jobs_dir>/<job_id>/lease`` (the partition lease's files: ``renew``, ``expired``, ``holder.log``; written by the
detached partition holder as the SSH user, mounted read-only into the container)."""

from __future__ import annotations

import posixpath
import re
import shlex
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import trio

from cumulus.errors import InvalidRequest
from cumulus.resources.ssh import RemotePathNotFound, SshConnection, SshError

JOB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PACKAGE_NAME = "package.zip"
RESTORE_NAME = "checkpoint.bin"  # the checkpoint an attempt resumes from, next to the package (read-only)
RESULT_NAME = "result.msgpack"
CLEANUP_TIMEOUT = 30.0


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it matches ``^[a-z0-9][a-z0-9-]{0,62}$`` (safe as a path component, a Docker name and
    a label); raise :class:`InvalidRequest` otherwise."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidRequest(f"invalid job id {job_id!r}: must match {JOB_ID_RE.pattern}")
    return job_id


def _check_jobs_dir(jobs_dir: str) -> str:
    if not jobs_dir.startswith("/") or posixpath.normpath(jobs_dir) in ("/", "") or ".." in jobs_dir.split("/"):
        raise InvalidRequest(f"jobs_dir must be an absolute path below /: {jobs_dir!r}")
    return posixpath.normpath(jobs_dir)


@dataclass
class JobFiles:
    """Paths of one job's directory on the worker, plus :meth:`fetch_result`."""

    conn: SshConnection
    job_dir: str
    code_dir: str
    output_dir: str
    lease_dir: str | None = None

    @property
    def result_path(self) -> str:
        return posixpath.join(self.output_dir, RESULT_NAME)

    async def fetch_result(self, max_bytes: int) -> bytes | None:
        """The bytes of ``output/result.msgpack``, or ``None`` if the job wrote none. The job could have made it
        anything: it is read only if it is a regular file (never through a symbolic link; a FIFO or device is never
        opened) of at most ``max_bytes`` (:meth:`SshConnection.get_bytes`, in a session of its own, bounded).

        Raises :class:`RemoteFileRefused` (:class:`NotARegularFile`, :class:`RemoteFileTooLarge`: nothing read)
        for what the job left there, :class:`SshError` if the worker cannot be asked."""
        try:
            return await self.conn.get_bytes(self.result_path, max_bytes)
        except RemotePathNotFound:
            return None


@asynccontextmanager
async def open_job_files(
    conn: SshConnection, *, jobs_dir: str, job_id: str, package: bytes, restore: bytes | None = None,
    from_warm: str | None = None,
) -> AsyncIterator[JobFiles]:
    """Create ``<jobs_dir>/<job_id>/{code,output,lease}``, upload ``package`` as ``code/package.zip`` (mode 0444, code
    dir then 0555; ``restore``, the checkpoint the attempt resumes from, as ``code/checkpoint.bin``), make ``output``
    the SSH user's with mode 0700 (the job container runs as the SSH user's uid:gid, so only the job and the supervisor
    can read or write it; never 0777) and ``lease`` the SSH user's (0755: the detached partition holder writes there,
    the container only reads it); yield :class:`JobFiles`.

    ``from_warm``: the job takes that warm service's directory (:mod:`cumulus.resources.warm`), renamed to the
    job's (a failure half-way removes the warm one too); the job's own id: they were made for it already. A leftover directory of the same job id is replaced. Raises :class:`InvalidRequest` for a bad job id and
    :class:`SshError` if the worker refuses; a half-made directory is removed before the error propagates.
    Leaving the block removes the whole job directory: shielded, bounded (30 s), idempotent. A removal failure is
    raised as :class:`SshError` only when the block itself ended without an exception (otherwise the original
    exception wins); the reaper (:func:`list_job_dirs` / :func:`remove_job_dir`) catches what is left.
    """
    files = _paths(conn, jobs_dir, job_id)
    q = shlex.quote
    made = False
    try:
        if from_warm == job_id:
            pass  # made for this job already (a service made early mounts them)
        elif from_warm is not None:
            from cumulus.resources.warm import take_over_command  # noqa: PLC0415 - it imports this module

            await conn.run_to_completion(take_over_command(_check_jobs_dir(jobs_dir), from_warm, files.job_dir),
                                         timeout=15)
        else:
            # What an earlier attempt left (its node was lost before it could clean up) goes first; its code/
            # is read-only, so it is made writable again before rm -rf.
            await conn.run_to_completion(
            f"{{ ! [ -e {q(files.job_dir)} ] || {{ chmod -R u+w -- {q(files.job_dir)} 2>/dev/null;"
            f" rm -rf -- {q(files.job_dir)}; }}; }} && mkdir -m 0755 -- {q(files.job_dir)}"
            f" && mkdir -m 0755 -- {q(files.code_dir)} && mkdir -m 0700 -- {q(files.output_dir)}"
            f" && chmod 0700 -- {q(files.output_dir)} && mkdir -m 0755 -- {q(files.lease_dir)}",
            timeout=15,
            )
        await conn.put_bytes(package, posixpath.join(files.code_dir, PACKAGE_NAME), 0o444)
        if restore is not None:
            await conn.put_bytes(restore, posixpath.join(files.code_dir, RESTORE_NAME), 0o444)
        await conn.chmod(files.code_dir, 0o555)
        made = True
    finally:
        if not made:  # failed or cancelled half-way: remove what was made
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                try:
                    await _remove(conn, files.job_dir)
                    if from_warm is not None:
                        await _remove(conn, posixpath.join(_check_jobs_dir(jobs_dir), check_job_id(from_warm)))
                except SshError:
                    pass
    async with _removed_on_exit(conn, files):
        yield files


@asynccontextmanager
async def adopt_job_files(conn: SshConnection, *, jobs_dir: str, job_id: str) -> AsyncIterator[JobFiles]:
    """Take charge of a job directory that already exists on the worker (made by :func:`open_job_files` of an
    earlier supervisor, e.g. before a restart); yield its :class:`JobFiles`. Nothing is created or uploaded.

    Raises :class:`InvalidRequest` for a bad job id, :class:`RemotePathNotFound` if ``<jobs_dir>/<job_id>`` is
    not a directory, :class:`SshError` if the worker cannot be asked. Leaving the block removes the whole job
    directory, exactly as :func:`open_job_files` does.
    """
    files = _paths(conn, jobs_dir, job_id)
    res = await conn.run(f"test -d {shlex.quote(files.job_dir)}", timeout=30, check=False)
    if res.exit_status != 0:
        raise RemotePathNotFound(conn.label, f"adopt job dir {files.job_dir}", "no such directory")
    async with _removed_on_exit(conn, files):
        yield files


@asynccontextmanager
async def _removed_on_exit(conn: SshConnection, files: JobFiles) -> AsyncIterator[None]:
    ok = False
    try:
        yield
        ok = True
    finally:
        with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            try:
                await _remove(conn, files.job_dir)
            except SshError:
                if ok:
                    raise


def _paths(conn: SshConnection, jobs_dir: str, job_id: str) -> JobFiles:
    job_dir = posixpath.join(_check_jobs_dir(jobs_dir), check_job_id(job_id))
    return JobFiles(conn, job_dir, posixpath.join(job_dir, "code"), posixpath.join(job_dir, "output"),
                    posixpath.join(job_dir, "lease"))


async def _remove(conn: SshConnection, job_dir: str) -> None:
    # code/ is 0555 (so that the container cannot add files): make it writable again before rm -rf.
    q = shlex.quote
    await conn.run(
        f"if [ -e {q(job_dir)} ]; then chmod -R u+w -- {q(job_dir)} 2>/dev/null; rm -rf -- {q(job_dir)}; fi;"
        f" ! [ -e {q(job_dir)} ]",
        timeout=CLEANUP_TIMEOUT,
    )


async def list_job_dirs(conn: SshConnection, jobs_dir: str) -> list[str]:
    """The job ids that have a directory under ``jobs_dir`` on the worker (names that are not valid job ids are
    skipped). Raises :class:`SshError`."""
    res = await conn.run(f"ls -1A -- {shlex.quote(_check_jobs_dir(jobs_dir))}", timeout=30)
    return sorted(n for n in res.stdout.split("\n") if JOB_ID_RE.fullmatch(n))


async def remove_job_dir(conn: SshConnection, jobs_dir: str, job_id: str) -> None:
    """Remove ``<jobs_dir>/<job_id>`` and everything in it. Idempotent. Raises :class:`SshError` if something
    stays (e.g. a directory the container created as root inside ``output``)."""
    await _remove(conn, _paths(conn, jobs_dir, job_id).job_dir)


__all__ = ["JOB_ID_RE", "RESTORE_NAME", "JobFiles", "adopt_job_files", "check_job_id", "list_job_dirs",
           "open_job_files", "remove_job_dir"]
