"""The channel to a class instance: its Unix socket on its node, reached through the node's SSH connection.

A class instance's runner listens on ``<job output dir>/instance.sock`` (``worker_image/image/runner_instance.py``
documents the protocol); its container has no network. The supervisor already holds an SSH connection to every
node, and SSH forwards Unix sockets (a ``direct-streamlocal`` channel, OpenSSH's ``-L`` to a socket path): so a
call needs no network of the job's and no port of the node's, only that connection.

:func:`open_instance_channel` opens one such channel as a context manager (closed on exit, always);
:class:`InstanceChannel` sends and receives whole frames (a 4-byte big-endian length, then the bytes). Each
receive is one trip into asyncio (the length and the body are read there together).
"""

from __future__ import annotations

import asyncio
import struct
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

import asyncssh

from cumulus.asyncio_bridge import call_asyncio
from cumulus.errors import CumulusError

SOCKET_NAME = "instance.sock"  # runner_instance.SOCKET_NAME
_LENGTH = struct.Struct(">I")


class InstanceNotServing(CumulusError):
    """Nothing listens on the instance's socket (yet): it is still being constructed, or it has ended."""


class InstanceChannelLost(CumulusError):
    """The channel to the instance broke (its container ended, the SSH connection dropped, a bad frame)."""


class InstanceChannel:
    """One open channel to an instance; frames in both directions. One sender and one receiver at a time."""

    def __init__(self, reader: Any, writer: Any, label: str, max_frame: int) -> None:
        self._reader, self._writer = reader, writer
        self._label, self._max_frame = label, max_frame

    async def send(self, frames: Sequence[bytes]) -> None:
        """Write ``frames`` (in one write) and wait until the channel took them."""
        data = b"".join(_LENGTH.pack(len(frame)) + frame for frame in frames)
        try:
            await call_asyncio(self._write, data)
        except (asyncssh.Error, OSError) as error:
            raise InstanceChannelLost(f"{self._label}: sending to the instance failed: {error}") from error

    async def receive(self) -> bytes:
        """The next frame; InstanceChannelLost once the instance closed its end (or sent a frame over the
        limit)."""
        try:
            return await call_asyncio(self._read_frame)
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as error:
            raise InstanceChannelLost(f"{self._label}: the instance closed its socket ({type(error).__name__})") \
                from error

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def _read_frame(self) -> bytes:
        (size,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
        if size > self._max_frame:
            raise InstanceChannelLost(f"{self._label}: the instance sent a frame of {size} bytes, over the limit "
                                      f"of {self._max_frame}")
        return bytes(await self._reader.readexactly(size))


@asynccontextmanager
async def open_instance_channel(conn: Any, socket_path: str, *, label: str, max_frame: int,
                                timeout: float = 10.0) -> AsyncIterator[InstanceChannel]:
    """A channel to the Unix socket ``socket_path`` on the host of ``conn`` (an asyncssh connection).

    Raises InstanceNotServing when nothing listens there, InstanceChannelLost for other failures to open it.
    Closing it (on exit, also when cancelled) closes the channel only: the instance goes on serving.
    """

    async def connect() -> tuple[Any, Any]:
        return await asyncio.wait_for(conn.open_unix_connection(socket_path), timeout)

    try:
        reader, writer = await call_asyncio(connect)
    except asyncssh.ChannelOpenError as error:
        raise InstanceNotServing(f"{label}: nothing listens on {socket_path} ({error.reason})") from error
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as error:
        raise InstanceChannelLost(f"{label}: cannot reach the instance: {type(error).__name__}: {error}") \
            from error
    try:
        yield InstanceChannel(reader, writer, label, max_frame)
    finally:
        writer.close()  # sends EOF and closes the channel; asyncssh finishes it on its loop


__all__ = ["InstanceChannel", "InstanceChannelLost", "InstanceNotServing", "SOCKET_NAME", "open_instance_channel"]
