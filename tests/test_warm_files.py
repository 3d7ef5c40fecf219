"""A warm service's files on a worker, through the real SSH backend against a real OpenSSH sshd on loopback: its
directories and FIFO, their hand-over to a job by renaming (what a bind mount follows), the start message written
to a waiting reader (and a clear error when nobody waits), and the node-side stop that waits on the running lock."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time

import pytest
import trio

from cumulus.asyncio_bridge import open_asyncio_bridge
from cumulus.backends import SshNodeBackend
from cumulus.config import load_settings
from cumulus.resources.warm import FIFO_NAME, WarmServiceGone, new_warm_id, start_message
from tests.test_ssh_files import connect, sshd  # noqa: F401 - the module's sshd fixture

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def jobs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    (root / ".leases").mkdir()
    return root


def backend(conn, jobs_dir) -> SshNodeBackend:
    settings = load_settings(environ={}, overrides={"cluster.jobs_dir": str(jobs_dir), "supervisor_id": "unit",
                                                    "cluster.image": "sha256:" + "0" * 64})
    return SshNodeBackend(conn, settings)


async def test_warm_dirs_are_made_with_their_fifo_and_removed_unless_handed_over(sshd, jobs_dir):
    warm_id = new_warm_id("unit", "abcdef0123456789")
    async with open_asyncio_bridge(), connect(sshd) as conn:
        node = backend(conn, jobs_dir)
        async with node.open_warm_dirs(warm_id) as dirs:
            assert stat.S_ISFIFO(os.stat(os.path.join(dirs.code_dir, FIFO_NAME)).st_mode)
            assert stat.S_IMODE(os.stat(dirs.output_dir).st_mode) == 0o700
            assert os.path.isdir(dirs.lease_dir) and dirs.lease_dir == node.lease_dir(warm_id)
        assert not (jobs_dir / warm_id).exists() and not os.path.exists(dirs.lease_dir)
        async with node.open_warm_dirs(warm_id) as dirs:
            dirs.handed_over = True
        assert (jobs_dir / warm_id).is_dir()


async def test_a_job_takes_the_warm_directories_by_renaming_them(sshd, jobs_dir):
    warm_id, job_id = new_warm_id("unit", "abcdef0123456789"), "unit-0123456789ab"
    async with open_asyncio_bridge(), connect(sshd) as conn:
        node = backend(conn, jobs_dir)
        async with node.open_warm_dirs(warm_id) as dirs:
            dirs.handed_over = True
            fifo_inode = os.stat(os.path.join(dirs.code_dir, FIFO_NAME)).st_ino
        (jobs_dir / job_id).mkdir()  # what an earlier attempt left: replaced
        async with node.open_job_files(job_id=job_id, package=b"zip", from_warm=warm_id) as files:
            assert not (jobs_dir / warm_id).exists()
            assert os.stat(os.path.join(files.code_dir, FIFO_NAME)).st_ino == fifo_inode  # the same directory
            assert (jobs_dir / job_id / "code" / "package.zip").read_bytes() == b"zip"
        assert not (jobs_dir / job_id).exists()


async def test_the_start_message_reaches_a_waiting_reader_and_nobody_waiting_is_an_error(sshd, jobs_dir):
    warm_id, job_id = new_warm_id("unit", "abcdef0123456789"), "unit-0123456789ab"
    async with open_asyncio_bridge(), connect(sshd) as conn:
        node = backend(conn, jobs_dir)
        async with node.open_warm_dirs(warm_id) as dirs:
            dirs.handed_over = True
        async with node.open_job_files(job_id=job_id, package=b"zip", from_warm=warm_id) as files:
            fifo = os.path.join(files.code_dir, FIFO_NAME)
            with pytest.raises(WarmServiceGone, match="did not take its job"):
                await node.start_warm_job(job_id, b"{}")  # nobody reads
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
            reader.start()
            message = start_message({"CUMULUS_JOB_ID": job_id, "X": "a b'c\"$(d)"})
            await node.start_warm_job(job_id, message)
            await trio.to_thread.run_sync(reader.join, 10)
            assert got == [message]


async def test_stop_waits_on_the_node_until_the_running_lock_is_free(sshd, jobs_dir):
    job_id = "unit-0123456789ab"
    lease = jobs_dir / ".leases" / job_id
    lease.mkdir()
    (jobs_dir / job_id / "output").mkdir(parents=True)
    async with open_asyncio_bridge(), connect(sshd) as conn:
        node = backend(conn, jobs_dir)
        assert await node.stop_job(job_id) is False  # no runner lock (not started): the Swarm is asked instead
        assert (lease / "expired").read_text().startswith("stopped")
        lock = open(jobs_dir / job_id / "output" / ".running", "wb")
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        threading.Timer(0.5, lock.close).start()  # the job's processes end half a second later
        assert await node.stop_job(job_id) is True
        assert time.monotonic() - started >= 0.45
