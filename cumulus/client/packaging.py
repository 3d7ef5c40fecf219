"""Building a job package: :func:`build_package` pickles a call and zips it with the caller's source, its
explicit ``py_modules`` and its ``working_dir`` and data ``files`` (the files area).

The format itself (member names, limits, the manifest, :func:`validate_package`) is :mod:`cumulus.jobformat`,
shared with the supervisor; which modules are the caller's is :mod:`cumulus.client.collect`, what the
``py_modules``/``working_dir``/``files`` options ship is :mod:`cumulus.client.runtime_env`; decoding the result
envelope is :mod:`cumulus.client.results`. The names of those modules that callers used from here before the split
(``validate_package``, ``decode_result``, ``raise_remote``, ``Outcome``, ``RemoteTraceback``, ``MANIFEST``, ...)
are re-exported. No gRPC and no I/O beyond reading the caller's files.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import stat
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import cloudpickle

from cumulus.client.collect import function_name, local_modules, source_files
from cumulus.client.results import Outcome, RemoteTraceback, decode_result, raise_remote, remote_exception
from cumulus.errors import InvalidRequest, PackageTooLarge
from cumulus.client.runtime_env import RESERVED_MEMBERS, collect_runtime_env
from cumulus.jobformat import (CALL, FILES, FILES_FORMAT, FORMAT, MANIFEST, MAX_MANIFEST_BYTES, MAX_MEMBERS,
                               MAX_PACKAGE_BYTES, MAX_REQUIREMENT_LEN, MAX_REQUIREMENTS, MAX_SOURCE_FILE_BYTES,
                               REQUIREMENTS, SRC, UNCOMPRESSED_FACTOR, MiB, PackageInfo, check_env,
                               check_member_name, check_requirements, encode_result, fmt_bytes, over_limit,
                               validate_package)

__all__ = [
    "CALL", "DEFAULT_MAX_BYTES", "FORMAT", "MANIFEST", "MAX_MANIFEST_BYTES", "MAX_MEMBERS", "MAX_REQUIREMENTS",
    "MAX_REQUIREMENT_LEN", "MAX_SOURCE_FILE_BYTES", "MiB", "REQUIREMENTS", "SRC", "UNCOMPRESSED_FACTOR",
    "Outcome", "PackageInfo", "RemoteTraceback", "build_package", "check_member_name", "cloudpickle_version",
    "decode_result", "encode_result", "python_version", "raise_remote", "remote_exception", "validate_package",
]

DEFAULT_MAX_BYTES = MAX_PACKAGE_BYTES
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same job gives the same bytes
_CHUNK = 1 << 20
# cloudpickle's by-value registry is process-wide: two submissions pickling at once (threads, remote_async) must
# not undo each other's registrations halfway through a pickle.
_PICKLE_LOCK = threading.Lock()


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def cloudpickle_version() -> str:
    try:
        return importlib.metadata.version("cloudpickle")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copies
        return getattr(cloudpickle, "__version__", "unknown")


def build_package(func: Callable[..., Any], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
                  requirements: Iterable[str] = (), env: dict[str, str] | None = None,
                  project_root: Path | str | None = None, max_bytes: int = MAX_PACKAGE_BYTES,
                  py_modules: Iterable[Any] = (), working_dir: Any = None, files: Iterable[Any] = (),
                  instance: bool = False) -> bytes:
    """Pack ``func(*args, **kwargs)`` as a job package (zip bytes).

    The caller's modules that ``func``, its closure, its arguments, and - transitively - those modules reference
    (:mod:`cumulus.client.collect`: every module that is not installed code, wherever its file is; only those under
    ``project_root`` when one is given) are pickled by value *and* shipped as source under ``src/`` (so that code
    importing them at run time works too). Installed packages (stdlib, site-packages, virtualenvs), ``.git`` and
    ``__pycache__`` are never included; neither is a found module's source file over 5 MiB (listed in the
    manifest's ``skipped``). ``py_modules``, ``working_dir`` and ``files`` add what
    :mod:`cumulus.client.runtime_env` says (explicit modules under ``src/``; the job's working directory, the files
    area, in a format-2 package). Raises :class:`PackageTooLarge` when the archive would exceed ``max_bytes`` and
    :class:`InvalidRequest` for bad requirements, env, or runtime-env paths (the rules of
    :mod:`cumulus.jobformat.request`, the same the supervisor applies: an empty requirement is refused).
    ``instance``: ``func`` is a class whose instance the job makes and then serves method calls on (``@remote`` on a
    class); the manifest says ``"instance": true`` (only then, so a function's package is unchanged).
    """
    if not callable(func):
        raise InvalidRequest(f"the job function must be callable, got {type(func).__name__}")
    args = tuple(args)
    kwargs = dict(kwargs or {})
    reqs = check_requirements(requirements)
    env = check_env(env or {})
    root = None if project_root is None else Path(project_root).resolve()
    local = local_modules(func, args, kwargs, root)
    sources, skipped = _sources(local)
    extra = collect_runtime_env(py_modules, working_dir, files, max_bytes=max_bytes,
                                budget=MAX_MEMBERS - RESERVED_MEMBERS - len(sources))
    for arc, entry in extra.sources.items():
        known = sources.get(arc)
        if known is not None and known.resolve() != entry.real:
            raise InvalidRequest(f"{entry.what}: {entry.path} and {known} (a module the function uses) would both "
                                 f"be {arc!r} in the job; ship only one module of that name")
        sources[arc] = entry.path
    data = {arc: entry.path for arc, entry in extra.files.items()}
    call = _pickle_call(func, args, kwargs, local.values())

    has_files = bool(data or extra.dirs)
    manifest: dict[str, Any] = {
        "format": FILES_FORMAT if has_files else FORMAT,  # format 1 runners and supervisors still take the rest
        "python": python_version(),
        "cloudpickle": cloudpickle_version(),
        "function": function_name(func),
        "requirements": reqs,
        "modules": sorted(sources),
        "env": env,
    }
    if has_files:
        manifest["files"] = sorted(data)
    if skipped:
        manifest["skipped"] = skipped
    if instance:
        manifest["instance"] = True
    buf = io.BytesIO()
    try:
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            _write(zf, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            _write(zf, CALL, call)
            _write(zf, REQUIREMENTS, "".join(r + "\n" for r in reqs).encode())
            for arc, path in sorted({**sources, **data}.items()):
                _copy(zf, arc, path, buf, max_bytes)
            for arc in sorted(extra.dirs):
                _mkdir(zf, arc)
    except _Overflow as overflow:
        raise PackageTooLarge(_too_large(buf.tell(), max_bytes, overflow.sizes)) from None
    sizes = [(i.compress_size, i.filename) for i in zf.infolist()]
    package = buf.getvalue()
    if len(package) > max_bytes:
        raise PackageTooLarge(_too_large(len(package), max_bytes, sizes))
    validate_package(package, max_bytes)
    return package


class _Overflow(Exception):
    def __init__(self, sizes: list[tuple[int, str]]) -> None:
        self.sizes = sizes


def _too_large(size: int, max_bytes: int, sizes: list[tuple[int, str]]) -> str:
    """The message of a package over ``max_bytes``: its five biggest entries and what to do about the biggest."""
    sizes = sorted(sizes, reverse=True)
    biggest = ", ".join(f"{n} ({fmt_bytes(s)})" for s, n in sizes[:5])
    top = sizes[0][1] if sizes else ""
    hint = ("pass big data by reference (a path or URL the job reads) instead of as an argument" if top == CALL
            else "ship less with files=/working_dir= (leave big files out) or let the job download its data"
            if top.startswith(FILES) else "move big files out of the project directory")
    return f"job package is {over_limit(size, max_bytes)}; biggest files (compressed): {biggest}; {hint}"


def _pickle_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 local: Iterable[Any]) -> bytes:
    """cloudpickle of ``(func, args, kwargs)`` with the caller's ``local`` modules pickled by value."""
    registered = []
    with _PICKLE_LOCK:
        try:
            already = cloudpickle.list_registry_pickle_by_value()
            for mod in local:
                if mod.__name__ not in already and mod.__name__ != "__main__":
                    cloudpickle.register_pickle_by_value(mod)
                    registered.append(mod)
            try:
                data: bytes = cloudpickle.dumps((func, args, kwargs), protocol=5)
            except Exception as exc:  # noqa: BLE001 - the message is what the user needs
                raise InvalidRequest(f"cannot pickle the job call {function_name(func)}(...): "
                                     f"{type(exc).__name__}: {exc}") from exc
        finally:
            for mod in registered:
                cloudpickle.unregister_pickle_by_value(mod)
    return data


def _sources(local: dict[str, Any]) -> tuple[dict[str, Path], list[str]]:
    """The source files of the ``local`` modules by archive name, and those left out for their size."""
    files: dict[str, Path] = {}
    skipped: list[str] = []
    for name, mod in sorted(local.items()):
        for arc, path in source_files(name, mod):
            if arc in files:
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size > MAX_SOURCE_FILE_BYTES:
                skipped.append(f"{path} ({fmt_bytes(size)})")
                continue
            files[arc] = path
    return files, skipped


def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    zf.writestr(info, data)


def _copy(zf: zipfile.ZipFile, arc: str, path: Path, buf: io.BytesIO, max_bytes: int) -> None:
    """``path`` into the zip as ``arc``, read in chunks: stops (:class:`_Overflow`) once the zip passes
    ``max_bytes``, so a big file is never read whole."""
    info = zipfile.ZipInfo(arc, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    start = buf.tell()
    try:
        with open(path, "rb") as src, zf.open(info, "w") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                if buf.tell() > max_bytes:
                    raise _Overflow([(i.compress_size, i.filename) for i in zf.infolist()]
                                    + [(buf.tell() - start, arc)])
    except OSError as error:
        raise InvalidRequest(f"cannot read {path} (for {arc!r}): {error.strerror or error}") from None


def _mkdir(zf: zipfile.ZipFile, arc: str) -> None:
    info = zipfile.ZipInfo(arc, date_time=_ZIP_DATE)
    info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10  # 0x10: the MS-DOS directory flag
    zf.writestr(info, b"")
