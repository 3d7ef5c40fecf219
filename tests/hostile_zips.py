"""Job packages for the hostile-input suite (tests/test_hostile_input.py): valid minimal ones, and zips that lie.

A valid package here is the smallest the supervisor accepts (a manifest and a ``call.pkl`` that is never
unpickled: the fake cluster does not run it). The hostile ones are built with :mod:`zipfile` where it can write
them, and crafted record by record (APPNOTE.TXT 4.3.12-4.3.16) where it cannot: an end record that declares more
entries than the directory holds, a zip64 end record declaring 900,000 entries over a real 49 MiB directory,
sizes that claim gigabytes. Big ones are cached: each is built once per test run.
"""

from __future__ import annotations

import functools
import io
import json
import stat
import struct
import warnings
import zipfile

from cumulus.jobformat import CALL, MANIFEST, MiB

MANIFEST_FIELDS = {"format": 1, "python": "3.11", "cloudpickle": "3.1.3", "function": "m.f", "requirements": [],
                   "modules": [], "env": {}}

_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry, fixed part (46 bytes)
_END = struct.Struct("<4s4H2LH")  # end of central directory (22 bytes)
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory (56 bytes)
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # zip64 end locator (20 bytes)


def zip_of(members: list[tuple[zipfile.ZipInfo | str, bytes]] = (), manifest: object = None,
           call: bytes | None = b"not unpickled by anyone") -> bytes:
    """A zip with a manifest (``manifest``: None = a valid one, a dict/list = that as JSON, bytes = those bytes,
    False = none), ``call.pkl`` (unless ``call`` is None) and ``members``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if manifest is not False:
            raw = manifest if isinstance(manifest, bytes) else json.dumps(
                MANIFEST_FIELDS if manifest is None else manifest).encode()
            zf.writestr(_dated(MANIFEST), raw)
        if call is not None:
            zf.writestr(_dated(CALL), call)
        for name, data in members:
            zf.writestr(_dated(name) if isinstance(name, str) else name, data)
    return buf.getvalue()


def _dated(name: str) -> zipfile.ZipInfo:
    """A member with a fixed time: the same members make the same bytes (zipfile would stamp the current time)."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def manifest_with(**fields: object) -> bytes:
    """A package whose manifest is the valid one with ``fields`` replaced."""
    return zip_of(manifest={**MANIFEST_FIELDS, **fields})


def package(tag: str = "") -> bytes:
    """A valid package; a different ``tag`` makes different bytes (another request for idempotency)."""
    return zip_of(call=b"call " + tag.encode())


def entry_of_kind(name: str, kind: int) -> zipfile.ZipInfo:
    """A member whose Unix mode says ``kind`` (stat.S_IFLNK, S_IFCHR, S_IFIFO, ...)."""
    info = _dated(name)
    info.external_attr = (kind | 0o777) << 16
    return info


def compressed_entry(name: str, method: int) -> zipfile.ZipInfo:
    info = _dated(name)
    info.compress_type = method
    return info


def symlink(name: str = "src/evil") -> tuple[zipfile.ZipInfo, bytes]:
    return entry_of_kind(name, stat.S_IFLNK), b"/etc/passwd"


def _end_offset(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def with_declared_entries(data: bytes, entries: int) -> bytes:
    """``data`` with its end record declaring ``entries`` (0..65535) entries, its directory unchanged."""
    end = _end_offset(data)
    fields = list(_END.unpack_from(data, end))
    fields[3] = fields[4] = entries
    return data[:end] + _END.pack(*fields) + data[end + _END.size:]


_FLAGS, _UNCOMPRESSED_SIZE = 5, 11  # fields of a central directory entry (_ENTRY)


def with_entry_fields(data: bytes, field: int, value: int, only: str | None = None) -> bytes:
    """``data`` with field number ``field`` of its central directory entries (of the entry named ``only``, or all)
    set to ``value``: what zipfile will not write (an encryption flag, a size that lies)."""
    end = _end_offset(data)
    _, _, _, _, entries, _, dir_offset, _ = _END.unpack_from(data, end)
    out = bytearray(data)
    position = dir_offset
    for _ in range(entries):
        fields = list(_ENTRY.unpack_from(out, position))
        name = bytes(out[position + _ENTRY.size:position + _ENTRY.size + fields[12]]).decode()
        if only is None or name == only:
            fields[field] = value
            _ENTRY.pack_into(out, position, *fields)
        position += _ENTRY.size + fields[12] + fields[13] + fields[14]
    return bytes(out)


def with_claimed_sizes(data: bytes, size: int) -> bytes:
    """``data`` with every entry claiming ``size`` uncompressed bytes (a zip bomb that only lies)."""
    return with_entry_fields(data, _UNCOMPRESSED_SIZE, size)


def with_encrypted_entry(name: str = "src/secret.py") -> bytes:
    """A package with a member flagged as encrypted (zipfile cannot write one)."""
    return with_entry_fields(zip_of([(name, b"x")]), _FLAGS, 0x1, only=name)


def zip64_announced_but_missing() -> bytes:
    """A valid package whose end record says the real numbers are in a zip64 record that is not there."""
    data = package()
    end = _end_offset(data)
    fields = list(_END.unpack_from(data, end))
    fields[3] = fields[4] = 0xFFFF
    return data[:end] + _END.pack(*fields) + data[end + _END.size:]


def _central_entry(name: bytes, offset: int) -> bytes:
    return _ENTRY.pack(b"PK\x01\x02", 20, 3, 20, 3, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0, 0, 0, 0,
                       (stat.S_IFREG | 0o644) << 16, offset) + name


@functools.cache
def many_entries(entries: int = 900_000, total_bytes: int = 49 * MiB) -> bytes:
    """A zip of about ``total_bytes`` whose central directory really holds ``entries`` entries (empty files, one
    name repeated, no local headers: a directory parser reads them all before it sees anything else), ended by
    a zip64 end record and locator: the package that once stalled the supervisor's event loop for seconds."""
    directory = _central_entry(b"a", 0) * entries
    padding = max(0, total_bytes - len(directory) - _ZIP64_END.size - _ZIP64_LOCATOR.size - _END.size)
    zip64_end_at = padding + len(directory)
    zip64_end = _ZIP64_END.pack(b"PK\x06\x06", _ZIP64_END.size - 12, 45, 45, 0, 0, entries, entries,
                                len(directory), padding)
    locator = _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, zip64_end_at, 1)
    end = _END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(padding) + directory + zip64_end + locator + end


@functools.cache
def real_zip_bomb(inflated_bytes: int = 401 * MiB) -> bytes:
    """A valid package plus one deflated member of ``inflated_bytes`` zeros (about 1/1000 of that compressed)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(MANIFEST, json.dumps(MANIFEST_FIELDS))
        zf.writestr(CALL, b"x")
        chunk = bytes(MiB)
        with zf.open("src/zeros.bin", "w", force_zip64=True) as member:
            for _ in range(inflated_bytes // MiB):
                member.write(chunk)
    return buf.getvalue()


def duplicate_entry(name: str = CALL) -> bytes:
    """A package holding ``name`` twice (zipfile warns, and writes it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return zip_of([(name, b"second")])


def too_many_real_entries(entries: int) -> bytes:
    return zip_of([(f"src/{i}.py", b"") for i in range(entries)])


def truncated(data: bytes, cut: int = 30) -> bytes:
    return data[:-cut]
