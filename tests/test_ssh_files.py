"""Reading and writing files on a worker through cumulus.resources.ssh, against a real OpenSSH sshd (and its
``sftp-server``) on loopback: what a job leaves as its result is read only if it is a regular file, never through
a symbolic link; a FIFO, a directory or a device fails at once, naming what it is; a file over the limit is
refused before a byte is read; and one job's stuck file operation does not hold up another's on the same
connection.
"""

from __future__ import annotations

import os
import stat

import pytest
import trio

from cumulus.asyncio_bridge import open_asyncio_bridge
from cumulus.resources.files import JobFiles
from cumulus.resources.ssh import (NotARegularFile, RemoteFileTooLarge, RemotePathNotFound, SshError,
                                   open_ssh_connection)
from tests.loopback_sshd import running_sshd

# Only a guard against hanging forever (on code that blocks on a FIFO); nothing here is asserted about time.
HANG_GUARD = 60


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def files(sshd, tmp_path_factory):
    """A fresh directory on the "worker", with another job's secret beside it."""
    root = tmp_path_factory.mktemp("job", numbered=True)
    (root / "secret").write_bytes(b"another job's package")
    (root / "output").mkdir()
    return root


def connect(sshd):
    return open_ssh_connection(sshd.host, sshd.port, user=sshd.user, key_path=sshd.key_path,
                               known_hosts_path=sshd.known_hosts_path)


async def test_a_regular_file_is_read_whole_and_a_missing_one_is_not_found(sshd, files):
    (files / "output" / "result.msgpack").write_bytes(b"\x00result\xff" * 1000)
    async with open_asyncio_bridge(), connect(sshd) as conn:
        assert await conn.get_bytes(str(files / "output" / "result.msgpack"), 10_000) == b"\x00result\xff" * 1000
        with pytest.raises(RemotePathNotFound):
            await conn.get_bytes(str(files / "output" / "nothing"), 100)
        job = JobFiles(conn, str(files), str(files / "code"), str(files / "output"))
        assert await job.fetch_result(10_000) == b"\x00result\xff" * 1000
        (files / "output" / "result.msgpack").unlink()
        assert await job.fetch_result(10_000) is None


async def test_a_symlinked_result_is_refused_and_its_target_never_read(sshd, files):
    (files / "output" / "result.msgpack").symlink_to(files / "secret")
    async with open_asyncio_bridge(), connect(sshd) as conn:
        job = JobFiles(conn, str(files), str(files / "code"), str(files / "output"))
        with pytest.raises(NotARegularFile) as refused:
            await job.fetch_result(10_000)
    assert refused.value.kind == "a symbolic link"
    assert "is a symbolic link, not a regular file" in str(refused.value)
    assert "another job" not in str(refused.value)


async def test_a_directory_and_a_dangling_symlink_are_refused(sshd, files):
    (files / "output" / "dir").mkdir()
    (files / "output" / "dangling").symlink_to(files / "nowhere")
    async with open_asyncio_bridge(), connect(sshd) as conn:
        with pytest.raises(NotARegularFile, match="is a directory"):
            await conn.get_bytes(str(files / "output" / "dir"), 100)
        with pytest.raises(NotARegularFile, match="is a symbolic link"):
            await conn.get_bytes(str(files / "output" / "dangling"), 100)


async def test_a_device_is_refused_without_being_opened(sshd, files):
    try:
        os.mknod(files / "output" / "result.msgpack", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null
    except PermissionError:
        pytest.skip("mknod needs root")
    async with open_asyncio_bridge(), connect(sshd) as conn:
        with pytest.raises(NotARegularFile, match="is a character device"):
            await conn.get_bytes(str(files / "output" / "result.msgpack"), 100)


async def test_a_fifo_fails_at_once_and_other_file_operations_on_the_connection_go_on(sshd, files):
    os.mkfifo(files / "output" / "result.msgpack")  # no writer: opening it for reading would block
    (files / "other").write_bytes(b"the other job's result")
    outcomes: dict[str, object] = {}
    async with open_asyncio_bridge(), connect(sshd) as conn:

        async def fifo() -> None:
            try:
                await conn.get_bytes(str(files / "output" / "result.msgpack"), 100)
            except NotARegularFile as refused:
                outcomes["fifo"] = refused.kind

        async def other() -> None:
            outcomes["other"] = await conn.get_bytes(str(files / "other"), 100)

        async def upload() -> None:
            await conn.put_bytes(b"a package", str(files / "uploaded"), 0o444)
            outcomes["upload"] = True

        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fifo)
                await trio.sleep(0.2)  # the FIFO first: on a shared session it would hold up what follows
                nursery.start_soon(other)
                nursery.start_soon(upload)
    assert outcomes == {"fifo": "a FIFO", "other": b"the other job's result", "upload": True}
    assert (files / "uploaded").read_bytes() == b"a package"
    assert stat.S_IMODE((files / "uploaded").stat().st_mode) == 0o444


async def test_a_file_over_the_limit_is_refused_before_it_is_read(sshd, files):
    (files / "output" / "result.msgpack").write_bytes(b"x" * 5000)
    async with open_asyncio_bridge(), connect(sshd) as conn:
        with pytest.raises(RemoteFileTooLarge) as refused:
            await conn.get_bytes(str(files / "output" / "result.msgpack"), 4999)
        assert await conn.get_bytes(str(files / "output" / "result.msgpack"), 5000) == b"x" * 5000
    assert (refused.value.size, refused.value.limit) == (5000, 4999)
    assert "is 5000 bytes, over the limit of 4999 bytes" in str(refused.value)


async def test_every_file_operation_is_bounded(sshd, files):
    (files / "big").write_bytes(b"y" * 100_000)
    async with open_asyncio_bridge(), connect(sshd) as conn:
        with pytest.raises(SshError, match="timed out after|no answer within"):
            await conn.run("sleep 30", timeout=0.5)
        with pytest.raises(SshError, match="timed out after|no answer within"):
            await conn.get_bytes(str(files / "big"), 100_000, timeout=0.0001)
        with pytest.raises(SshError, match="no answer within"):
            await conn.put_bytes(b"z" * 100_000, str(files / "slow"), timeout=0.0001)
        with pytest.raises(SshError, match="no answer within"):
            await conn.chmod(str(files / "big"), 0o600, timeout=0.0001)
        # The connection is still fine afterwards.
        assert await conn.get_bytes(str(files / "big"), 100_000) == b"y" * 100_000
        await conn.chmod(str(files / "big"), 0o600)
    assert stat.S_IMODE((files / "big").stat().st_mode) == 0o600
