"""What a job carries besides its call and the modules :mod:`cumulus.client.collect` finds: the options
``py_modules``, ``working_dir`` and ``files`` (Ray's runtime_env names), as archive names mapped to the caller's
files. :func:`collect_runtime_env` walks them; :mod:`cumulus.client.packaging` writes them into the zip.

* ``py_modules=[module_or_path, ...]``: a module object, an importable dotted name (``"helpers"``,
  ``"pkg.sub"``), or the path of a ``.py`` file or a package directory (an existing path wins over a name). Shipped
  under ``src/`` by module name (a path: its file stem or directory name), parent packages' ``__init__.py``
  included, so it imports remotely under the same name; a package goes whole (its data files too). Refused: the
  standard library, built-in and compiled modules (list their distribution in ``requirements``), ``cumulus``.
* ``working_dir="path"``: that directory's contents become the job's working directory (``files/``, the runner's
  cwd, also on ``sys.path``), so its modules import and its files open by the same relative names as there.
* ``files=["data/", "config.json"]``: paths from the caller's current directory (or absolute): one inside it keeps
  its relative path in the job's working directory, any other lands there under its own name. Directories go
  recursively; an empty one is created.

Directories are walked without the names of :data:`~cumulus.client.collect.EXCLUDED_DIRS` (``.git``, virtualenvs,
``__pycache__``...), directories holding a ``pyvenv.cfg``, and ``*.pyc``. A symbolic link inside a walked directory
is shipped as what it points to if that stays inside the directory; one that leads out of it, dangles or loops is
refused (a path given explicitly is followed). FIFOs, sockets and devices are refused. Limits: the package's
(:data:`~cumulus.jobformat.MAX_MEMBERS` entries; 8x the package limit uncompressed, checked on the files' sizes
before any is read; the package limit itself when the zip is written). Every refusal raises
:class:`~cumulus.errors.InvalidRequest` (:class:`~cumulus.errors.PackageTooLarge` for sizes) saying what to change.
"""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import keyword
import os
import stat
import sys
import sysconfig
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cumulus.client.collect import EXCLUDED_DIRS
from cumulus.errors import InvalidRequest, PackageTooLarge
from cumulus.jobformat import (FILES, MAX_MEMBERS, SRC, UNCOMPRESSED_FACTOR, check_member_name, fmt_bytes,
                               over_limit)

RESERVED_MEMBERS = 8  # the manifest, call.pkl, requirements.txt, the caller's modules' share is counted apart
WALK_FACTOR = 10  # directory entries looked at, at most, per member that fits: walking $HOME stops early
_CUMULUS = Path(__file__).resolve().parent.parent


@dataclass
class Entry:
    path: Path  # as given or walked (for messages)
    real: Path  # resolved (to tell the same file given twice from two files of one name)
    size: int
    what: str  # the option that brought it, for messages: "files: 'data/'"


@dataclass
class RuntimeEnv:
    """Archive name -> file to ship; ``dirs``: the files area's empty directories (names ending in ``/``)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    @property
    def sources(self) -> dict[str, Entry]:
        return {arc: e for arc, e in self.entries.items() if arc.startswith(SRC)}

    @property
    def files(self) -> dict[str, Entry]:
        return {arc: e for arc, e in self.entries.items() if arc.startswith(FILES)}


# ---- the options' shapes (normalize_options and build_package both use these) --------------------------------

def as_path(value: Any, option: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{option}={value!r}: give a path (a non-empty str or os.PathLike)")
    return value


def as_paths(value: Any, option: str) -> tuple[str, ...]:
    """One path or a list of them, as a tuple of str."""
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise InvalidRequest(f"{option}={value!r}: give a list of paths, e.g. {option}=['data/', 'config.json']")
    return tuple(as_path(v, option) for v in value)


def as_py_modules(value: Any) -> tuple[types.ModuleType | str, ...]:
    """One entry or a list of them: modules kept as they are, paths and names as str."""
    if isinstance(value, (str, os.PathLike, types.ModuleType)):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise InvalidRequest(f"py_modules={value!r}: give a list of modules, module names or paths, e.g. "
                             f"py_modules=[helpers, 'lib/tools.py']")
    return tuple(v if isinstance(v, types.ModuleType) else as_path(v, "py_modules") for v in value)


# ---- collecting ---------------------------------------------------------------------------------------------

def collect_runtime_env(py_modules: Iterable[Any] = (), working_dir: Any = None, files: Iterable[Any] = (), *,
                        max_bytes: int, budget: int = MAX_MEMBERS - RESERVED_MEMBERS) -> RuntimeEnv:
    """What the three options ship (see the module docstring); at most ``budget`` entries."""
    walker = _Walker(max_bytes, budget)
    for module in as_py_modules(py_modules):
        walker.add_py_module(module)
    if working_dir is not None:
        given = as_path(working_dir, "working_dir")
        top = Path(given).expanduser()
        if not top.is_dir():
            raise InvalidRequest(f"working_dir={given!r} is not a directory (relative paths start at the current "
                                 f"directory, {os.getcwd()}); give the directory to run the job in")
        walker.add_tree(top, FILES, f"working_dir {given!r}")
    cwd = Path(os.getcwd())
    for given in as_paths(files, "files"):
        walker.add_data(given, cwd)
    return walker.env


class _Walker:
    def __init__(self, max_bytes: int, budget: int) -> None:
        self.env = RuntimeEnv()
        self.max_bytes = max_bytes
        self.budget = budget
        self.raw = 0

    # ---- files= -------------------------------------------------------------------------------------------
    def add_data(self, given: str, cwd: Path) -> None:
        what = f"files: {given!r}"
        path = Path(os.path.abspath(cwd / Path(given).expanduser()))  # normalized, links not followed
        if not path.exists():
            raise InvalidRequest(f"{what} does not exist (relative paths start at the current directory, {cwd}); "
                                 f"give an existing file or directory")
        # Inside the current directory: the same relative path in the job's; anywhere else: under its own name.
        rel = path.relative_to(cwd).as_posix() if path == cwd or cwd in path.parents else path.name
        rel = "" if rel == "." else rel
        if path.is_dir():
            self.add_tree(path, FILES + (rel + "/" if rel else ""), what)
        elif path.is_file():
            if not rel:
                raise InvalidRequest(f"{what}: give a file or directory with a name")
            self.add_file(FILES + rel, path, what)
        else:
            raise InvalidRequest(f"{what} is not a regular file or directory (a FIFO, socket or device)")

    # ---- py_modules= ----------------------------------------------------------------------------------------
    def add_py_module(self, module: types.ModuleType | str) -> None:
        if isinstance(module, types.ModuleType):
            self.add_module(module.__name__, getattr(module, "__file__", None),
                            list(getattr(module, "__path__", None) or []) or None, f"py_modules: {module.__name__}")
            return
        what = f"py_modules: {module!r}"
        path = Path(module).expanduser()
        if path.exists():
            name = path.stem if path.is_file() else path.resolve().name
            if path.is_file() and path.suffix != ".py":
                raise InvalidRequest(f"{what} is not a .py file; give a Python module (a .py file or a package "
                                     f"directory), or ship data with files=")
            if not name.isidentifier() or keyword.iskeyword(name):
                raise InvalidRequest(f"{what}: {name!r} is not a valid module name, so it could not be imported "
                                     f"remotely; rename it (letters, digits, '_')")
            self.add_module(name, str(path) if path.is_file() else None, None if path.is_file() else [str(path)],
                            what)
            return
        if not all(part.isidentifier() for part in module.split(".")):
            raise InvalidRequest(f"{what} does not exist (relative paths start at the current directory, "
                                 f"{os.getcwd()}) and is not a module name")
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as error:
            raise InvalidRequest(f"{what} cannot be found: {type(error).__name__}: {error}") from None
        if spec is None:
            raise InvalidRequest(f"{what} is neither an existing path (from the current directory, {os.getcwd()}) "
                                 f"nor an importable module")
        search = list(spec.submodule_search_locations or []) or None
        self.add_module(module, spec.origin if spec.has_location else None, search, what)

    def add_module(self, name: str, file: str | None, search: list[str] | None, what: str) -> None:
        """Module ``name`` (its ``.py`` file, or a package's directories) under ``src/``, with the ``__init__.py``
        of its parent packages."""
        problem = _not_shippable(name, file, search)
        if problem:
            raise InvalidRequest(f"{what}: {problem}")
        parts = name.split(".")
        arc = SRC + "/".join(parts)
        if search is not None:
            for location in search:
                self.add_tree(Path(location), arc + "/", what)
            first = Path(search[0])
        else:
            assert file is not None  # _not_shippable refused a module with neither
            self.add_file(arc + ".py", Path(file), what)
            first = Path(file)
        d = first.parent
        for i in range(len(parts) - 1, 0, -1):
            init = d / "__init__.py"
            if init.is_file():
                self.add_file(SRC + "/".join(parts[:i]) + "/__init__.py", init, what)
            d = d.parent

    # ---- the walk -------------------------------------------------------------------------------------------
    def add_tree(self, top: Path, prefix: str, what: str) -> None:
        """Everything under directory ``top`` (a link given explicitly is followed) as ``prefix`` + its path."""
        base = top.resolve()
        looked = 0
        todo: list[tuple[Path, str, tuple[Path, ...]]] = [(top, prefix, (base,))]
        while todo:
            directory, arc_dir, chain = todo.pop()
            try:
                children = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as error:
                raise InvalidRequest(f"{what}: cannot list {directory}: {error.strerror or error}") from None
            if not children and arc_dir != FILES and arc_dir.startswith(FILES):
                self._count(f"{what}: {directory}")
                self.env.dirs.add(arc_dir)
            for child in children:
                looked += 1
                if looked > WALK_FACTOR * self.budget:
                    raise InvalidRequest(f"{what}: more than {WALK_FACTOR * self.budget} entries under {top}; "
                                         f"give a smaller directory")
                self._walk_one(Path(child.path), child, arc_dir, chain, base, top, what, todo)

    def _walk_one(self, path: Path, child: os.DirEntry[str], arc_dir: str, chain: tuple[Path, ...], base: Path,
                  top: Path, what: str, todo: list[tuple[Path, str, tuple[Path, ...]]]) -> None:
        name = child.name
        if child.is_symlink():
            target, exists = _link_target(path, what)
            if target != base and base not in target.parents:
                raise InvalidRequest(f"{what}: {path} is a symbolic link to {target}, outside {top}; a link in a "
                                     f"shipped directory must stay inside it: ship {target} itself (files=) or "
                                     f"replace the link by a copy")
            if not exists:
                raise InvalidRequest(f"{what}: {path} is a symbolic link to {target}, which does not exist; "
                                     f"remove it")
            if target.is_dir():
                if target in chain:
                    raise InvalidRequest(f"{what}: {path} is a symbolic link to {target}, a directory that "
                                         f"contains it (a loop); remove it")
                if name not in EXCLUDED_DIRS:
                    todo.append((path, f"{arc_dir}{name}/", chain + (target,)))
                return
            kind = target.stat().st_mode
        elif child.is_dir(follow_symlinks=False):
            if name not in EXCLUDED_DIRS and not (path / "pyvenv.cfg").exists():
                todo.append((path, f"{arc_dir}{name}/", chain + (path.resolve(),)))
            return
        else:
            kind = child.stat(follow_symlinks=False).st_mode
        if not stat.S_ISREG(kind):
            raise InvalidRequest(f"{what}: {path} is not a regular file or directory (a FIFO, socket or device); "
                                 f"remove it or move it out")
        if not name.endswith(".pyc"):
            self.add_file(arc_dir + name, path, what)

    def add_file(self, arc: str, path: Path, what: str) -> None:
        problem = check_member_name(arc)
        try:
            arc.encode("utf-8")
        except UnicodeEncodeError:
            problem = "the name is not valid UTF-8"
        if problem:
            raise InvalidRequest(f"{what}: {path} cannot be shipped as {arc!r} ({problem}); rename it")
        real = path.resolve()
        old = self.env.entries.get(arc)
        if old is not None:
            if old.real == real:
                return
            raise InvalidRequest(f"{what}: {path} and {old.path} ({old.what}) would both be {arc!r} in the job; "
                                 f"ship only one of them, or rename one")
        size = real.stat().st_size
        self._count(f"{what}: {path}")
        self.raw += size
        self.env.entries[arc] = Entry(path, real, size, what)
        cap = UNCOMPRESSED_FACTOR * self.max_bytes
        if self.raw > cap:
            biggest = sorted(self.env.entries.values(), key=lambda e: -e.size)[:5]
            shown = ", ".join(f"{e.path} ({fmt_bytes(e.size)})" for e in biggest)
            raise PackageTooLarge(f"py_modules, working_dir and files add up to {over_limit(self.raw, cap)} "
                                  f"({UNCOMPRESSED_FACTOR}x the {fmt_bytes(self.max_bytes)} package limit) before "
                                  f"compression; biggest: {shown}; ship less (move big files out of the "
                                  f"directories given) or let the job download its data")

    def _count(self, where: str) -> None:
        if len(self.env.entries) + len(self.env.dirs) >= self.budget:
            raise InvalidRequest(f"{where}: more than {self.budget} files and directories to ship; a package holds "
                                 f"at most {MAX_MEMBERS} entries: ship an archive of them instead (and unpack it "
                                 f"in the job) or let the job download them")


def _link_target(path: Path, what: str) -> tuple[Path, bool]:
    """Where the symbolic link ``path`` leads (resolved) and whether that exists. A link that loops (to itself,
    or through others back to itself) is refused: ``Path.resolve`` raises ``RuntimeError`` for it up to Python
    3.12, and answers a path that does not exist from 3.13."""
    try:
        return Path(os.path.realpath(path, strict=True)), True
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InvalidRequest(f"{what}: {path} is a symbolic link that loops (it leads back to itself); "
                                 f"remove it") from None
        return Path(os.path.realpath(path)), False


def _not_shippable(name: str, file: str | None, search: list[str] | None) -> str | None:
    """Why module ``name`` cannot be shipped as source (None when it can)."""
    if name == "cumulus" or name.startswith("cumulus."):
        return "the cumulus package is never shipped (the worker has its own runner)"
    if file is None and search is None:
        if name in sys.builtin_module_names or name.partition(".")[0] in sys.stdlib_module_names:
            return f"{name} is built into the interpreter; every worker has it"
        return (f"{name} has no file to ship (a module made at run time?); give the path of its .py file or "
                f"package directory")
    if file is not None and search is None and file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return (f"{name} is a compiled extension ({file}), which is not shipped; list its distribution in "
                f"requirements")
    if file is not None and search is None and not file.endswith(".py"):
        return f"{name} has no Python source ({file}); list its distribution in requirements"
    where = Path(file if file is not None else (search or [""])[0]).resolve()
    stdlib = {Path(p).resolve() for k in ("stdlib", "platstdlib") if (p := sysconfig.get_paths().get(k))}
    if any(root in where.parents for root in stdlib) and "site-packages" not in where.parts and \
            "dist-packages" not in where.parts:
        return f"{name} is part of the standard library; every worker has it, remove it from py_modules"
    if where == _CUMULUS or _CUMULUS in where.parents:
        return "the cumulus package is never shipped (the worker has its own runner)"
    return None
