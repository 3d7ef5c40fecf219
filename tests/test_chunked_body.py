"""The followed-log body decoder of :mod:`cumulus.resources.swarm_logs` (HTTP/1.1 chunked coding read a buffer at a
time), however the bytes arrive."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from cumulus.resources.swarm_logs import _ChunkedBody


class ArrivingInPieces(io.RawIOBase):
    """A socket file whose ``read1`` returns the given pieces, one per call, then end of stream."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    def read1(self, size: int = -1) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def chunked(chunks: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def read_all(body: _ChunkedBody) -> bytes:
    out = b""
    while data := body.read():
        out += data
    return out


@given(chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=30), cuts=st.lists(st.integers(0, 10_000)))
def test_any_split_of_a_chunked_body_decodes_to_its_data(chunks, cuts):
    wire = chunked(chunks)
    bounds = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    pieces = [wire[a:b] for a, b in zip(bounds, bounds[1:])]
    body = _ChunkedBody(ArrivingInPieces(pieces), chunked=True)
    assert read_all(body) == b"".join(chunks)


def test_reads_stop_at_the_last_chunk_and_ignore_what_follows():
    body = _ChunkedBody(ArrivingInPieces([b"5;ext=1\r\nhello\r\n0\r\n\r\nGARBAGE"]), chunked=True)
    assert body.read() == b"hello"
    assert body.read() == b""


def test_a_body_that_is_not_chunked_is_passed_through():
    body = _ChunkedBody(ArrivingInPieces([b"ab", b"cd"]), chunked=False)
    assert read_all(body) == b"abcd"
