"""Which of the caller's modules go into a job package, and where their source goes (``src/``).

Starting from the job function (its module, the globals its code names, closure cells, defaults),
``functools.partial`` objects and the call's arguments (containers up to depth 3), then transitively every found
module's globals (its imports) and parent packages: every module with a ``.py`` file that is not installed code,
wherever that file is (the script's directory, another directory on ``sys.path``, a ``src/`` layout, a notebook's
``sys.path`` tweak). Installed code (:func:`is_installed`): the interpreter's stdlib and site-packages, any
``site-packages``/``dist-packages``/``__pypackages__`` directory, a virtualenv's trees (``lib``, ``src``, ``bin``...
of a directory with a ``pyvenv.cfg``; code kept beside them in the virtualenv's directory is the caller's), a
``.venv``/``venv``/``.tox``/``.nox`` directory, ``.git``, ``__pycache__``, ``node_modules``, and the ``cumulus``
package itself. With an explicit project root only modules under it count (the behaviour before local
code could live anywhere). ``__main__`` is never shipped as source (cloudpickle pickles it by value already).
Building the zip from what is found here is :mod:`cumulus.client.packaging`'s job; explicit ``py_modules`` are
:mod:`cumulus.client.runtime_env`'s.
"""

from __future__ import annotations

import sys
import sysconfig
import types
from pathlib import Path
from typing import Any, Iterator

from cumulus.jobformat.limits import SRC

EXCLUDED_DIRS = frozenset({".venv", "venv", ".git", "__pycache__", "site-packages", "dist-packages", ".tox",
                           ".nox", "node_modules", "__pypackages__"})
"""Directory names never shipped: a module whose path has one is installed code (or not code at all); a directory
given to ``working_dir=``, ``files=`` or ``py_modules=`` is shipped without them."""


def local_modules(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], root: Path | None = None
                  ) -> dict[str, types.ModuleType]:
    """The caller's modules (by name) that ``func(*args, **kwargs)`` reaches: wherever they are, or only those
    under ``root`` when one is given."""
    finder = _LocalModules(root)
    finder.visit_object(func)
    for obj in _walk_values((args, kwargs)):
        finder.visit_object(obj)
    return finder.walk()


def function_name(func: Any) -> str:
    """``module.QualName`` of a callable (the manifest's ``function``, the job's default name)."""
    mod = getattr(func, "__module__", None) or type(func).__module__
    qual = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{mod}.{qual}"


def installed_roots() -> list[Path]:
    """The interpreter's own trees (stdlib, site-packages, the prefixes' ``lib``) and the ``cumulus`` package."""
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


# What a virtualenv installs into, under its directory (pip puts editable VCS checkouts in src/).
VENV_TREES = frozenset({"lib", "lib64", "Lib", "src", "bin", "Scripts", "include", "share"})


class InstalledCode:
    """:meth:`contains`: whether a (resolved) path is installed code, as the module docstring defines it; the
    ``pyvenv.cfg`` look-ups are cached per directory."""

    def __init__(self) -> None:
        self.roots = installed_roots()
        self._venv: dict[Path, Path | None] = {}

    def contains(self, path: Path) -> bool:
        if EXCLUDED_DIRS.intersection(path.parts):
            return True
        if any(root == path or root in path.parents for root in self.roots):
            return True
        venv = self._venv_of(path.parent)
        return venv is not None and path.relative_to(venv).parts[0] in VENV_TREES

    def _venv_of(self, d: Path) -> Path | None:
        """The nearest directory at or above ``d`` with a ``pyvenv.cfg``."""
        if d not in self._venv:
            self._venv[d] = d if (d / "pyvenv.cfg").exists() else (
                None if d.parent == d else self._venv_of(d.parent))
        return self._venv[d]


class _LocalModules:
    """Collects the modules of the caller's project reachable from some objects."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.found: dict[str, types.ModuleType] = {}
        self._todo: list[types.ModuleType] = []
        self._seen_objs: set[int] = set()
        self._seen_mods: set[int] = set()
        self._installed = InstalledCode()

    def is_local(self, mod: types.ModuleType) -> bool:
        if mod.__name__ == "__main__":
            return False  # cloudpickle already pickles __main__ by value; it cannot be imported by name
        f = getattr(mod, "__file__", None)
        if not f or not f.endswith(".py"):
            return False
        p = Path(f).resolve()
        if self.root is not None:
            if self.root != p.parent and self.root not in p.parents:
                return False
            if EXCLUDED_DIRS.intersection(p.relative_to(self.root).parts):
                return False
        return not self._installed.contains(p)

    def add_module(self, mod: Any) -> None:
        if isinstance(mod, types.ModuleType) and id(mod) not in self._seen_mods and self.is_local(mod):
            self._seen_mods.add(id(mod))
            self._todo.append(mod)
            # A module missing from sys.modules (made with importlib.util.module_from_spec and kept apart) cannot
            # be imported by name, here or remotely: cloudpickle pickles it by value by itself and refuses to
            # register it (ValueError). Only what it reaches is collected.
            if mod.__name__ in sys.modules:
                self.found.setdefault(mod.__name__, mod)

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


def source_files(name: str, mod: types.ModuleType) -> list[tuple[str, Path]]:
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
