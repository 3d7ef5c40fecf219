"""Building a job package: :func:`build_package` pickles a call and zips it with the caller's source.

The format itself (member names, limits, the manifest, :func:`validate_package`) is :mod:`cumulus.jobformat`,
shared with the supervisor; which modules are the caller's is :mod:`cumulus.client.collect`; decoding the result
envelope is :mod:`cumulus.client.results`. The names of those modules that callers used from here before the split
(``validate_package``, ``decode_result``, ``raise_remote``, ``Outcome``, ``RemoteTraceback``, ``MANIFEST``, ...)
are re-exported. No gRPC and no I/O beyond reading the caller's source files.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import cloudpickle

from cumulus.client.collect import default_root, function_name, local_modules, source_files
from cumulus.client.results import Outcome, RemoteTraceback, decode_result, raise_remote, remote_exception
from cumulus.errors import InvalidRequest, PackageTooLarge
from cumulus.jobformat import (CALL, FORMAT, MANIFEST, MAX_MANIFEST_BYTES, MAX_MEMBERS, MAX_PACKAGE_BYTES,
                               MAX_REQUIREMENT_LEN, MAX_REQUIREMENTS, MAX_SOURCE_FILE_BYTES, REQUIREMENTS, SRC,
                               UNCOMPRESSED_FACTOR, MiB, PackageInfo, check_env, check_member_name,
                               check_requirements, encode_result, fmt_bytes, over_limit,
                               validate_package)

__all__ = [
    "CALL", "DEFAULT_MAX_BYTES", "FORMAT", "MANIFEST", "MAX_MANIFEST_BYTES", "MAX_MEMBERS", "MAX_REQUIREMENTS",
    "MAX_REQUIREMENT_LEN", "MAX_SOURCE_FILE_BYTES", "MiB", "REQUIREMENTS", "SRC", "UNCOMPRESSED_FACTOR",
    "Outcome", "PackageInfo", "RemoteTraceback", "build_package", "check_member_name", "cloudpickle_version",
    "decode_result", "encode_result", "python_version", "raise_remote", "remote_exception", "validate_package",
]

DEFAULT_MAX_BYTES = MAX_PACKAGE_BYTES
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same job gives the same bytes


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def cloudpickle_version() -> str:
    try:
        return importlib.metadata.version("cloudpickle")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copies
        return getattr(cloudpickle, "__version__", "unknown")


def build_package(func: Callable[..., Any], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
                  requirements: Iterable[str] = (), env: dict[str, str] | None = None,
                  project_root: Path | str | None = None, max_bytes: int = MAX_PACKAGE_BYTES) -> bytes:
    """Pack ``func(*args, **kwargs)`` as a job package (zip bytes).

    Modules of the caller's project (files under ``project_root``: by default the directory of the file that
    defines ``func``, else the current directory) that ``func``, its closure, its arguments, and - transitively -
    those modules reference are pickled by value *and* shipped as source under ``src/`` (so that code importing
    them at run time works too). Installed packages (site-packages, virtualenvs), ``.git`` and ``__pycache__``
    are never included; neither is a source file over 5 MiB. Raises :class:`PackageTooLarge` when the archive
    would exceed ``max_bytes`` and :class:`InvalidRequest` for bad requirements or env (the rules of
    :mod:`cumulus.jobformat.request`, the same the supervisor applies: an empty requirement is refused).
    """
    if not callable(func):
        raise InvalidRequest(f"the job function must be callable, got {type(func).__name__}")
    args = tuple(args)
    kwargs = dict(kwargs or {})
    reqs = check_requirements(requirements)
    env = check_env(env or {})
    root = (default_root(func) if project_root is None else Path(project_root)).resolve()
    local = local_modules(func, args, kwargs, root)
    call = _pickle_call(func, args, kwargs, local.values())
    files, skipped = _sources(local)

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "python": python_version(),
        "cloudpickle": cloudpickle_version(),
        "function": function_name(func),
        "requirements": reqs,
        "modules": sorted(files),
        "env": env,
    }
    if skipped:
        manifest["skipped"] = skipped
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        _write(zf, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _write(zf, CALL, call)
        _write(zf, REQUIREMENTS, "".join(r + "\n" for r in reqs).encode())
        for arc in sorted(files):
            _write(zf, arc, files[arc])
        sizes = sorted(((i.compress_size, i.filename) for i in zf.infolist()), reverse=True)
    data = buf.getvalue()
    if len(data) > max_bytes:
        biggest = ", ".join(f"{n} ({fmt_bytes(s)})" for s, n in sizes[:5])
        hint = ("pass big data by reference (a path or URL the job reads) instead of as an argument"
                if sizes and sizes[0][1] == CALL else "move big files out of the project directory")
        raise PackageTooLarge(f"job package is {over_limit(len(data), max_bytes)}; "
                              f"biggest files (compressed): {biggest}; {hint}")
    validate_package(data, max_bytes)
    return data


def _pickle_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 local: Iterable[Any]) -> bytes:
    """cloudpickle of ``(func, args, kwargs)`` with the caller's ``local`` modules pickled by value."""
    registered = []
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


def _sources(local: dict[str, Any]) -> tuple[dict[str, bytes], list[str]]:
    """The source files of the ``local`` modules by archive name, and those left out for their size."""
    files: dict[str, bytes] = {}
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
            files[arc] = path.read_bytes()
    return files, skipped


def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    zf.writestr(info, data)
