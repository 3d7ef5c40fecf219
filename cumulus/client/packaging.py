"""The job package (a zip the client uploads) and the result envelope (msgpack the runner writes).

Format: docs/job-format.md. This module has no gRPC and no I/O beyond reading the caller's source files:

* :func:`build_package` (client) - cloudpickle of ``(func, args, kwargs)`` with the caller's own modules pickled
  *by value*, plus their source under ``src/`` and a JSON manifest.
* :func:`validate_package` (supervisor) - checks an archive before it is uploaded to a worker. It reads the zip
  directory and the JSON manifest only; it never unpickles anything.
* :func:`decode_result` / :func:`raise_remote` (client) - turn the runner's envelope into a value or the original
  exception, with the remote traceback attached as ``__cause__``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import io
import json
import os
import re
import stat
import sys
import sysconfig
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn

import cloudpickle
import msgpack

from cumulus.errors import InvalidRequest, PackageTooLarge, RemoteError

FORMAT = 1
MANIFEST = "cumulus-job.json"
CALL = "call.pkl"
REQUIREMENTS = "requirements.txt"
SRC = "src/"

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 50 * MiB
MAX_SOURCE_FILE_BYTES = 5 * MiB  # a single source file bigger than this is left out
MAX_MANIFEST_BYTES = 1 * MiB
MAX_MEMBERS = 10_000
# Zip bombs: the declared uncompressed total may be at most 8x max_bytes (no per-member ratio check: a pickled
# array of zeros legitimately deflates 1000x). The runner enforces the same total on the actual bytes.
UNCOMPRESSED_FACTOR = 8
MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_LEN = 500
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same job gives the same bytes
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXCLUDED_DIRS = {".venv", "venv", ".git", "__pycache__", "site-packages", "dist-packages", ".tox", ".nox",
                  "node_modules"}


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def cloudpickle_version() -> str:
    try:
        return importlib.metadata.version("cloudpickle")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copies
        return getattr(cloudpickle, "__version__", "unknown")


# --------------------------------------------------------------------------------------------------- build


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


def build_package(func: Callable[..., Any], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
                  requirements: Iterable[str] = (), env: dict[str, str] | None = None,
                  project_root: Path | str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Pack ``func(*args, **kwargs)`` as a job package (zip bytes).

    Modules of the caller's project (files under ``project_root``: by default the directory of the file that
    defines ``func``, else the current directory) that ``func``, its closure, its arguments, and - transitively -
    those modules reference are pickled by value *and* shipped as source under ``src/`` (so that code importing
    them at run time works too). Installed packages (site-packages, virtualenvs), ``.git`` and ``__pycache__``
    are never included; neither is a source file over 5 MiB. Raises :class:`PackageTooLarge` when the archive
    would exceed ``max_bytes`` and :class:`InvalidRequest` for bad requirements or env.
    """
    if not callable(func):
        raise InvalidRequest(f"the job function must be callable, got {type(func).__name__}")
    args = tuple(args)
    kwargs = dict(kwargs or {})
    reqs = _check_requirements(list(requirements))
    env = _check_env(env or {})
    root = _default_root(func) if project_root is None else Path(project_root)
    root = root.resolve()

    finder = _LocalModules(root)
    finder.visit_object(func)
    for obj in _walk_values((args, kwargs)):
        finder.visit_object(obj)
    local = finder.walk()

    registered = []
    try:
        already = cloudpickle.list_registry_pickle_by_value()
        for mod in local.values():
            if mod.__name__ not in already and mod.__name__ != "__main__":
                cloudpickle.register_pickle_by_value(mod)
                registered.append(mod)
        try:
            call = cloudpickle.dumps((func, args, kwargs), protocol=5)
        except Exception as exc:  # noqa: BLE001 - the message is what the user needs
            raise InvalidRequest(f"cannot pickle the job call {_func_name(func)}(...): "
                                 f"{type(exc).__name__}: {exc}") from exc
    finally:
        for mod in registered:
            cloudpickle.unregister_pickle_by_value(mod)

    files: dict[str, bytes] = {}
    skipped: list[str] = []
    for name, mod in sorted(local.items()):
        for arc, path in _source_files(name, mod):
            if arc in files:
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size > MAX_SOURCE_FILE_BYTES:
                skipped.append(f"{path} ({_fmt(size)})")
                continue
            files[arc] = path.read_bytes()

    manifest = {
        "format": FORMAT,
        "python": python_version(),
        "cloudpickle": cloudpickle_version(),
        "function": _func_name(func),
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
        biggest = ", ".join(f"{n} ({_fmt(s)})" for s, n in sizes[:5])
        hint = ("pass big data by reference (a path or URL the job reads) instead of as an argument"
                if sizes and sizes[0][1] == CALL else "move big files out of the project directory")
        raise PackageTooLarge(f"job package is {_fmt(len(data))}, over the limit of {_fmt(max_bytes)}; "
                              f"biggest files (compressed): {biggest}; {hint}")
    validate_package(data, max_bytes)
    return data


def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    zf.writestr(info, data)


def _func_name(func: Any) -> str:
    mod = getattr(func, "__module__", None) or type(func).__module__
    qual = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{mod}.{qual}"


def _default_root(func: Any) -> Path:
    try:
        src = inspect.getsourcefile(inspect.unwrap(func))
    except TypeError:
        src = None
    if src and os.path.exists(src):
        p = Path(src).resolve().parent
        if not _in_installed_tree(p):
            return p
    return Path.cwd()


def _check_requirements(reqs: list[Any]) -> list[str]:
    out = []
    if len(reqs) > MAX_REQUIREMENTS:
        raise InvalidRequest(f"too many requirements ({len(reqs)}; at most {MAX_REQUIREMENTS})")
    for r in reqs:
        if not isinstance(r, str):
            raise InvalidRequest(f"requirement {r!r} is not a string")
        r = r.strip()
        if not r:
            continue
        if "\n" in r or "\r" in r or "\0" in r:
            raise InvalidRequest(f"requirement {r!r} contains a line break; give one requirement per item")
        if r.startswith("-"):
            raise InvalidRequest(f"requirement {r!r} is a pip option; only requirement specifiers "
                                 f"(like 'numpy>=1.26' or 'pkg @ https://...') are allowed")
        if len(r) > MAX_REQUIREMENT_LEN:
            raise InvalidRequest(f"requirement {r[:40]!r}... is longer than {MAX_REQUIREMENT_LEN} characters")
        out.append(r)
    return out


def _check_env(env: dict[Any, Any]) -> dict[str, str]:
    if not isinstance(env, dict):
        raise InvalidRequest(f"env must be a dict of str to str, got {type(env).__name__}")
    out = {}
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise InvalidRequest(f"env name {k!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if k.startswith("CUMULUS_"):
            raise InvalidRequest(f"env name {k!r}: the CUMULUS_ prefix is reserved for Cumulus")
        if not isinstance(v, str) or "\0" in v:
            raise InvalidRequest(f"env value of {k!r} must be a string without NUL bytes")
        out[k] = v
    return out


def _fmt(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"


# ---------------------------------------------------------------------------- finding the caller's modules


def _installed_roots() -> list[Path]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(Path(p).resolve())
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix):
        roots.add((Path(p) / "lib").resolve())
    # the cumulus package itself is never shipped: jobs do not need the client library
    roots.add(Path(__file__).resolve().parent.parent)
    return sorted(roots)


def _in_installed_tree(path: Path) -> bool:
    if _EXCLUDED_DIRS.intersection(path.parts):
        return True
    for root in _installed_roots():
        if path == root or root in path.parents:
            return True
    return False


class _LocalModules:
    """Collects the modules of the caller's project reachable from some objects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.found: dict[str, types.ModuleType] = {}
        self._todo: list[types.ModuleType] = []
        self._seen_objs: set[int] = set()
        self._venv_cache: dict[Path, bool] = {}
        self._installed = _installed_roots()

    def is_local(self, mod: types.ModuleType) -> bool:
        if mod.__name__ == "__main__":
            return False  # cloudpickle already pickles __main__ by value; it cannot be imported by name
        f = getattr(mod, "__file__", None)
        if not f or not f.endswith(".py"):
            return False
        p = Path(f).resolve()
        if self.root != p.parent and self.root not in p.parents:
            return False
        if _EXCLUDED_DIRS.intersection(p.relative_to(self.root).parts):
            return False
        if any(root == p or root in p.parents for root in self._installed):
            return False
        return not self._in_venv(p.parent)

    def _in_venv(self, d: Path) -> bool:
        if d in self._venv_cache:
            return self._venv_cache[d]
        res = (d / "pyvenv.cfg").exists() or (d != self.root and d.parent != d and self._in_venv(d.parent))
        self._venv_cache[d] = res
        return res

    def add_module(self, mod: Any) -> None:
        if isinstance(mod, types.ModuleType) and mod.__name__ not in self.found and self.is_local(mod):
            self.found[mod.__name__] = mod
            self._todo.append(mod)

    def add_module_name(self, name: str | None) -> None:
        if name and name in sys.modules:
            self.add_module(sys.modules[name])

    def visit_object(self, obj: Any, depth: int = 0) -> None:
        """Modules referenced by a function (globals it names, closure), class, or plain object."""
        if id(obj) in self._seen_objs or depth > 4:
            return
        self._seen_objs.add(id(obj))
        if isinstance(obj, types.ModuleType):
            self.add_module(obj)
            return
        if isinstance(obj, (types.MethodType,)):
            self.visit_object(obj.__func__, depth + 1)
            self.visit_object(obj.__self__, depth + 1)
            return
        if isinstance(obj, types.FunctionType):
            self.add_module_name(obj.__module__)
            g = obj.__globals__
            for name in _code_names(obj.__code__):
                if name in g:
                    self.visit_object(g[name], depth + 1)
            for cell in obj.__closure__ or ():
                try:
                    self.visit_object(cell.cell_contents, depth + 1)
                except ValueError:  # empty cell
                    pass
            for d in (obj.__defaults__ or ()) + tuple((obj.__kwdefaults__ or {}).values()):
                self.visit_object(d, depth + 1)
            return
        if isinstance(obj, type):
            for klass in obj.__mro__:
                self.add_module_name(klass.__module__)
            return
        wrapped = getattr(obj, "func", None)  # functools.partial
        if callable(wrapped) and hasattr(obj, "args"):
            self.visit_object(wrapped, depth + 1)
            for a in tuple(obj.args) + tuple((obj.keywords or {}).values()):
                self.visit_object(a, depth + 1)
        self.visit_object(type(obj), depth + 1)

    def walk(self) -> dict[str, types.ModuleType]:
        """Transitively: every local module's globals (its imports) and its parent packages."""
        while self._todo:
            mod = self._todo.pop()
            parent = mod.__name__.rpartition(".")[0]
            if parent:
                self.add_module_name(parent)
            for value in list(vars(mod).values()):
                if isinstance(value, types.ModuleType):
                    self.add_module(value)
                elif isinstance(value, (types.FunctionType, type)):
                    self.add_module_name(getattr(value, "__module__", None))
        return self.found


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _walk_values(obj: Any, depth: int = 0, budget: list[int] | None = None) -> Iterator[Any]:
    """Objects inside the call arguments (containers up to depth 3, at most 10000 items)."""
    budget = budget if budget is not None else [10_000]
    if budget[0] <= 0 or depth > 3:
        return
    budget[0] -= 1
    yield obj
    if isinstance(obj, (list, tuple, set, frozenset)):
        for x in obj:
            yield from _walk_values(x, depth + 1, budget)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_values(k, depth + 1, budget)
            yield from _walk_values(v, depth + 1, budget)


def _source_files(name: str, mod: types.ModuleType) -> list[tuple[str, Path]]:
    """``src/``-relative archive names for a module and the ``__init__.py`` of its parent packages."""
    assert mod.__file__ is not None  # _LocalModules.is_local() only accepts modules with a .py file
    path = Path(mod.__file__).resolve()
    parts = name.split(".")
    is_pkg = hasattr(mod, "__path__")
    rel = "/".join(parts) + ("/__init__.py" if is_pkg else ".py")
    out = [(SRC + rel, path)]
    # parent packages: one directory up per name component
    d = path.parent.parent if is_pkg else path.parent
    for i in range(len(parts) - 1, 0, -1):
        init = d / "__init__.py"
        if init.exists():
            out.append((SRC + "/".join(parts[:i]) + "/__init__.py", init))
        d = d.parent
    return out


# --------------------------------------------------------------------------------------------------- validate


def validate_package(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> PackageInfo:
    """Check a job package without unpickling anything; raises :class:`InvalidRequest` saying what to fix."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"job package must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise PackageTooLarge(f"job package is {_fmt(len(data))}, over the limit of {_fmt(max_bytes)}")
    if not data:
        raise InvalidRequest("job package is empty; build it with cumulus.client.packaging.build_package")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise InvalidRequest(f"job package is not a valid zip archive ({exc}); "
                             f"build it with cumulus.client.packaging.build_package") from None
    if len(infos) > MAX_MEMBERS:
        raise InvalidRequest(f"job package has {len(infos)} entries; at most {MAX_MEMBERS} are allowed")
    names: dict[str, zipfile.ZipInfo] = {}
    total = 0
    max_total = UNCOMPRESSED_FACTOR * max_bytes
    for info in infos:
        name = info.filename
        problem = check_member_name(name)
        if problem:
            raise InvalidRequest(f"job package entry {name!r}: {problem}")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
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
        key = name.rstrip("/")
        if key in names:
            raise InvalidRequest(f"job package has the entry {key!r} twice")
        names[key] = info
        total += info.file_size
        if total > max_total:
            raise PackageTooLarge(f"job package inflates to more than {_fmt(max_total)} "
                                  f"({UNCOMPRESSED_FACTOR}x the {_fmt(max_bytes)} limit): refusing a zip bomb")
    for required, what in ((MANIFEST, "the JSON manifest"), (CALL, "the pickled call")):
        if required not in names:
            raise InvalidRequest(f"job package has no {required} ({what}); "
                                 f"build it with cumulus.client.packaging.build_package")
    minfo = names[MANIFEST]
    if minfo.file_size > MAX_MANIFEST_BYTES:
        raise InvalidRequest(f"{MANIFEST} is {_fmt(minfo.file_size)}; at most {_fmt(MAX_MANIFEST_BYTES)}")
    try:
        with zf.open(minfo) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(raw.decode("utf-8"))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib_error()) as exc:
        raise InvalidRequest(f"{MANIFEST} is not valid JSON ({exc})") from None
    m = _check_manifest(manifest, names)
    return PackageInfo(manifest=manifest, function=m["function"], requirements=m["requirements"],
                       modules=m["modules"], env=m["env"], python=m["python"], cloudpickle=m["cloudpickle"],
                       compressed_bytes=len(data), uncompressed_bytes=total, members=len(infos),
                       sha256=hashlib.sha256(data).hexdigest())


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def check_member_name(name: str) -> str | None:
    """Why an archive member name is unsafe (``None`` when it is fine). The runner has the same rules."""
    if not name or "\0" in name:
        return "empty name or NUL byte"
    if "\\" in name:
        return "backslash in the name; use '/' as the separator"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path; entries must be relative paths"
    parts = name.rstrip("/").split("/")
    if any(p == ".." for p in parts):
        return "'..' path component; entries must stay inside the package"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    return None


def _check_manifest(m: Any, names: dict[str, zipfile.ZipInfo]) -> dict[str, Any]:
    def bad(msg: str) -> InvalidRequest:
        return InvalidRequest(f"{MANIFEST}: {msg}")

    if not isinstance(m, dict):
        raise bad("must be a JSON object")
    if m.get("format") != FORMAT:
        raise bad(f"unsupported format {m.get('format')!r}; this Cumulus understands format {FORMAT} "
                  f"(upgrade the client or the supervisor so that they match)")
    out: dict[str, Any] = {}
    for key in ("function", "python", "cloudpickle"):
        v = m.get(key)
        if not isinstance(v, str) or not v or len(v) > 1000:
            raise bad(f"{key!r} must be a non-empty string")
        out[key] = v
    reqs = m.get("requirements", [])
    if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
        raise bad("'requirements' must be a list of strings")
    try:
        out["requirements"] = _check_requirements(reqs)
    except InvalidRequest as exc:
        raise bad(str(exc)) from None
    mods = m.get("modules", [])
    if not isinstance(mods, list) or not all(isinstance(x, str) for x in mods):
        raise bad("'modules' must be a list of strings")
    for x in mods:
        if x not in names:
            raise bad(f"module file {x!r} is listed but not in the archive")
    out["modules"] = mods
    env = m.get("env", {})
    try:
        out["env"] = _check_env(env)
    except InvalidRequest as exc:
        raise bad(str(exc)) from None
    return out


# --------------------------------------------------------------------------------------------------- results


class RemoteTraceback(Exception):
    """Carries the job's traceback text; set as ``__cause__`` of a re-raised remote exception."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


@dataclass(frozen=True)
class Outcome:
    """A decoded result envelope. ``value`` is the unpickled return value when ``ok``."""

    ok: bool
    value: Any = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    exc_pickle: bytes | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> Any:
        """The return value, or the remote exception re-raised (see :func:`raise_remote`)."""
        if self.ok:
            return self.value
        raise_remote(self)


def encode_result(ok: bool, *, value: bytes | None = None, exc_type: str = "", exc_message: str = "",
                  traceback: str = "", exc_pickle: bytes | None = None, **extra: Any) -> bytes:
    """The envelope as the runner writes it (the runner has its own copy; this one is for tests and tools)."""
    env: dict[str, Any] = {"format": FORMAT, "ok": ok}
    if ok:
        env["value"] = value
    else:
        env.update(exc_type=exc_type, exc_message=exc_message, traceback=traceback, exc_pickle=exc_pickle)
    env.update(extra)
    packed: bytes = msgpack.packb(env, use_bin_type=True)
    return packed


def decode_result(envelope: bytes) -> Outcome:
    """Decode the runner's envelope; unpickles the value (client side only - never in the supervisor)."""
    try:
        env = msgpack.unpackb(envelope, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001
        raise RemoteError("cumulus.InvalidResult", f"result envelope is not valid msgpack: {exc}") from None
    if not isinstance(env, dict) or env.get("format") != FORMAT or not isinstance(env.get("ok"), bool):
        raise RemoteError("cumulus.InvalidResult", f"result envelope has an unknown shape or format "
                                                   f"({env.get('format') if isinstance(env, dict) else env!r})")
    known = {"format", "ok", "value", "exc_type", "exc_message", "traceback", "exc_pickle", "duration_s"}
    extra = {k: v for k, v in env.items() if k not in known}
    if env["ok"]:
        raw = env.get("value")
        if not isinstance(raw, bytes):
            raise RemoteError("cumulus.InvalidResult", "result envelope says ok but has no value bytes")
        return Outcome(ok=True, value=cloudpickle.loads(raw), duration_s=env.get("duration_s"), extra=extra)
    return Outcome(ok=False, exc_type=str(env.get("exc_type") or "builtins.Exception"),
                   exc_message=str(env.get("exc_message") or ""), traceback=str(env.get("traceback") or ""),
                   exc_pickle=env.get("exc_pickle") if isinstance(env.get("exc_pickle"), bytes) else None,
                   duration_s=env.get("duration_s"), extra=extra)


def remote_exception(outcome: Outcome) -> BaseException:
    """The exception a failed outcome stands for: the original one when it can be unpickled here, else
    :class:`RemoteError`; either way with ``__cause__`` = :class:`RemoteTraceback` (the job's traceback)."""
    exc: BaseException | None = None
    if outcome.exc_pickle:
        try:
            loaded = cloudpickle.loads(outcome.exc_pickle)
            if isinstance(loaded, BaseException):
                exc = loaded
        except Exception:  # noqa: BLE001 - type not importable here, or not unpicklable: fall back
            exc = None
    if exc is None:
        exc = RemoteError(outcome.exc_type, outcome.exc_message, outcome.traceback)
    exc.__cause__ = RemoteTraceback(outcome.traceback or f"{outcome.exc_type}: {outcome.exc_message}")
    return exc


def raise_remote(outcome: Outcome) -> NoReturn:
    """Re-raise a failed job's exception (see :func:`remote_exception`)."""
    if outcome.ok:
        raise ValueError("raise_remote called with a successful outcome")
    raise remote_exception(outcome)
