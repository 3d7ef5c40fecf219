"""The job package (a zip) as the supervisor and the SDK check it: the member-name rule, the manifest and
:func:`validate_package`.

:func:`validate_package` reads the zip directory and the JSON manifest only; it never unpickles anything (the
supervisor runs it on every submission, the SDK on every package it builds). Before :mod:`zipfile` parses the
directory, the zip's end-of-central-directory record and the directory's entry headers are checked against the
limits (:func:`check_zip_directory`): its cost is then bounded by ``MAX_MEMBERS`` entries, however many the
archive holds. The runner checks the members again when it extracts them, with its own copy of
:func:`check_member_name` and of the limits.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

from cumulus.errors import InvalidRequest, PackageTooLarge
from cumulus.jobformat.limits import (CALL, FILES, FILES_FORMAT, MANIFEST, MANIFEST_FORMATS, MAX_MANIFEST_BYTES,
                                      MAX_MEMBERS, MAX_PACKAGE_BYTES, MiB, UNCOMPRESSED_FACTOR)
from cumulus.jobformat.request import check_env, check_requirements

_BUILD_HINT = "build it with cumulus.client.packaging.build_package"
_DRIVE = re.compile(r"[A-Za-z]:")
# The zip format's directory records (APPNOTE.TXT 4.3.12-4.3.16), as zipfile reads them.
_END = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, entries, directory size/offset
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # a central directory entry's fixed part; name, extra, comment follow
_ENTRY_SIGNATURE = b"PK\x01\x02"


@dataclass(frozen=True)
class PackageInfo:
    """What :func:`validate_package` learnt from an archive (the manifest plus sizes)."""

    manifest: dict[str, Any]
    function: str
    requirements: list[str]
    modules: list[str]
    env: dict[str, str]
    python: str
    cloudpickle: str
    compressed_bytes: int
    uncompressed_bytes: int
    members: int
    sha256: str
    files: list[str] = field(default_factory=list)
    """The files area's files (format 2): archive names under ``files/``, as the manifest lists them."""


def over_limit(size: int, limit: int) -> str:
    """``"<size>, over the limit of <limit>"``, in bytes when the rounded figures would read the same."""
    shown, most = fmt_bytes(size), fmt_bytes(limit)
    if shown == most:
        shown, most = f"{size} bytes", f"{limit} bytes"
    return f"{shown}, over the limit of {most}"


def fmt_bytes(n: int) -> str:
    """``n`` bytes for a message: ``1.0 MiB``, ``3.5 KiB``, ``12 B``."""
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"


def check_member_name(name: str) -> str | None:
    """Why an archive member name is unsafe (``None`` when it is fine). The runner has a copy of this rule."""
    if not name or "\0" in name:
        return "empty name or NUL byte"
    if "\\" in name:
        return "backslash in the name; use '/' as the separator"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path; entries must be relative paths"
    parts = name.rstrip("/").split("/")
    if any(p == ".." for p in parts):
        return "'..' path component; entries must stay inside the package"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    return None


def validate_package(data: bytes, max_bytes: int = MAX_PACKAGE_BYTES) -> PackageInfo:
    """Check a job package without unpickling anything; raises :class:`InvalidRequest` saying what to fix
    (:class:`PackageTooLarge` when it is over ``max_bytes``, or inflates to more than 8 times that)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"job package must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise PackageTooLarge(f"job package is {over_limit(len(data), max_bytes)}")
    if not data:
        raise InvalidRequest(f"job package is empty; {_BUILD_HINT}")
    check_zip_directory(data)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise InvalidRequest(f"job package is not a valid zip archive ({exc}); {_BUILD_HINT}") from None
    if len(infos) > MAX_MEMBERS:
        raise InvalidRequest(f"job package has {len(infos)} entries; at most {MAX_MEMBERS} are allowed")
    names: dict[str, zipfile.ZipInfo] = {}
    total = 0
    max_total = UNCOMPRESSED_FACTOR * max_bytes
    for info in infos:
        _check_member(info, names)
        names[info.filename.rstrip("/")] = info
        total += info.file_size
        if total > max_total:
            raise PackageTooLarge(f"job package inflates to more than {fmt_bytes(max_total)} "
                                  f"({UNCOMPRESSED_FACTOR}x the {fmt_bytes(max_bytes)} limit): refusing a zip bomb")
    for required, what in ((MANIFEST, "the JSON manifest"), (CALL, "the pickled call")):
        if required not in names:
            raise InvalidRequest(f"job package has no {required} ({what}); {_BUILD_HINT}")
    manifest = _read_manifest(zf, names[MANIFEST])
    m = check_manifest(manifest, names)
    _check_files_area(names, m["format"])
    return PackageInfo(manifest=manifest, function=m["function"], requirements=m["requirements"],
                       modules=m["modules"], env=m["env"], python=m["python"], cloudpickle=m["cloudpickle"],
                       compressed_bytes=len(data), uncompressed_bytes=total, members=len(infos),
                       sha256=hashlib.sha256(data).hexdigest(), files=m["files"])


def _check_files_area(names: dict[str, zipfile.ZipInfo], fmt: int) -> None:
    """Entries of the files area only in a format-2 package (a format-1 runner would run the job without them),
    and ``files`` itself (the job's working directory) a directory, never a file."""
    area = FILES.rstrip("/")
    entry = names.get(area)
    if entry is not None and not _is_dir(entry):
        raise InvalidRequest(f"job package entry {area!r} is a file; the name is the files area's directory "
                             f"(the job's working directory); {_BUILD_HINT}")
    if fmt != FILES_FORMAT:
        inside = next((name for name in names if name.startswith(FILES)), None)
        if inside is not None:
            raise InvalidRequest(f"job package entry {inside!r} is in the files area, which needs format "
                                 f"{FILES_FORMAT} in {MANIFEST} (this package says format {fmt}); {_BUILD_HINT}")


def check_zip_directory(data: bytes) -> int:
    """The number of entries of the zip ``data``, checked without :mod:`zipfile`: its end record declares at most
    ``MAX_MEMBERS`` entries, and its central directory holds exactly those (walked header by header, so at most
    ``MAX_MEMBERS`` steps: a zip declaring few entries over a directory of a million is refused too).

    Raises :class:`InvalidRequest`: "not a valid zip archive (why)", or too many entries."""
    def invalid(why: str) -> InvalidRequest:
        return InvalidRequest(f"job package is not a valid zip archive ({why}); {_BUILD_HINT}")

    end = data.rfind(_END_SIGNATURE, max(0, len(data) - _END.size - 0xFFFF))  # the end record, then a comment
    if end < 0 or len(data) - end < _END.size:
        raise invalid("no end-of-central-directory record")
    _, _, _, _, entries, size, offset, _ = _END.unpack_from(data, end)
    directory_end = end
    if entries == 0xFFFF or size == 0xFFFFFFFF or offset == 0xFFFFFFFF:  # zip64: the real numbers are before it
        locator = end - _ZIP64_LOCATOR.size
        record = locator - _ZIP64_END.size
        if record < 0 or data[locator:locator + 4] != b"PK\x06\x07" or data[record:record + 4] != b"PK\x06\x06":
            raise invalid("a zip64 end record is announced but missing")
        _, _, _, _, _, _, _, entries, size, offset = _ZIP64_END.unpack_from(data, record)
        directory_end = record
    if entries > MAX_MEMBERS:
        raise InvalidRequest(f"job package has {entries} entries; at most {MAX_MEMBERS} are allowed")
    position = directory_end - size
    if position < 0:
        raise invalid(f"its central directory of {size} bytes is larger than the archive")
    walked = 0
    while walked < entries and position + _ENTRY.size <= directory_end:
        if data[position:position + 4] != _ENTRY_SIGNATURE:
            break
        fields = _ENTRY.unpack_from(data, position)
        position += _ENTRY.size + fields[12] + fields[13] + fields[14]  # name, extra field, comment
        walked += 1
    if walked != entries or position != directory_end:
        raise invalid(f"its central directory does not hold the {entries} entries its end record declares")
    return int(entries)


def _check_member(info: zipfile.ZipInfo, seen: dict[str, zipfile.ZipInfo]) -> None:
    name = info.filename
    problem = check_member_name(name)
    if problem:
        raise InvalidRequest(f"job package entry {name!r}: {problem}")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise InvalidRequest(f"job package entry {name!r} is a symbolic link; links are not allowed, "
                             f"include the file itself")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidRequest(f"job package entry {name!r} is not a regular file or directory")
    if info.flag_bits & 0x1:
        raise InvalidRequest(f"job package entry {name!r} is encrypted; encryption is not supported")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidRequest(f"job package entry {name!r} uses compression method {info.compress_type}; "
                             f"only stored and deflate are supported")
    if name.rstrip("/") in seen:
        raise InvalidRequest(f"job package has the entry {name.rstrip('/')!r} twice")


def _is_dir(info: zipfile.ZipInfo) -> bool:
    """As the runner tells them: a name ending in ``/`` or a directory's mode."""
    return info.is_dir() or stat.S_ISDIR(info.external_attr >> 16)


def _read_manifest(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    if info.file_size > MAX_MANIFEST_BYTES:
        raise InvalidRequest(f"{MANIFEST} is {fmt_bytes(info.file_size)}; at most {fmt_bytes(MAX_MANIFEST_BYTES)}")
    try:
        with zf.open(info) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        return json.loads(raw.decode("utf-8"))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise InvalidRequest(f"{MANIFEST} is not valid JSON ({exc})") from None


def check_manifest(m: Any, names: dict[str, zipfile.ZipInfo] | None = None) -> dict[str, Any]:
    """The checked fields of a manifest (``format``, ``function``, ``python``, ``cloudpickle``, ``requirements``,
    ``modules``, ``env``, ``files``); ``names`` are the archive's members, when the listed modules and files must
    be among them. ``files`` (format 2 only) lists the files area's files: names under ``files/``."""
    def bad(msg: str) -> InvalidRequest:
        return InvalidRequest(f"{MANIFEST}: {msg}")

    if not isinstance(m, dict):
        raise bad("must be a JSON object")
    fmt = m.get("format")
    if isinstance(fmt, bool) or fmt not in MANIFEST_FORMATS:
        raise bad(f"unsupported format {fmt!r}; this Cumulus understands formats "
                  f"{', '.join(map(str, MANIFEST_FORMATS))} (upgrade the client or the supervisor so that they match)")
    out: dict[str, Any] = {"format": fmt}
    for key in ("function", "python", "cloudpickle"):
        v = m.get(key)
        if not isinstance(v, str) or not v or len(v) > 1000:
            raise bad(f"{key!r} must be a non-empty string")
        out[key] = v
    reqs = m.get("requirements", [])
    if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
        raise bad("'requirements' must be a list of strings")
    out["requirements"] = check_requirements(reqs, where=f"{MANIFEST}: requirements")
    mods = m.get("modules", [])
    if not isinstance(mods, list) or not all(isinstance(x, str) for x in mods):
        raise bad("'modules' must be a list of strings")
    for x in mods:
        if names is not None and x not in names:
            raise bad(f"module file {x!r} is listed but not in the archive")
    out["modules"] = mods
    out["env"] = check_env(m.get("env", {}), where=f"{MANIFEST}: env")
    files = m.get("files", [])
    if not isinstance(files, list) or not all(isinstance(x, str) for x in files):
        raise bad("'files' must be a list of strings")
    if files and fmt != FILES_FORMAT:
        raise bad(f"'files' needs format {FILES_FORMAT} (this manifest says format {fmt})")
    for x in files:
        if not x.startswith(FILES) or x.endswith("/") or check_member_name(x):
            raise bad(f"file {x!r} is not a file name in the files area {FILES!r}")
        if names is not None and (x not in names or _is_dir(names[x])):
            raise bad(f"file {x!r} is listed but not in the archive")
    out["files"] = files
    return out
