"""Import rules: which layer of Cumulus may import which (issue 12).

Every module under ``cumulus/`` and ``worker_image/`` is parsed with :mod:`ast` (nothing is imported or run). Its
imports are collected, wherever they are (module level, inside functions, under ``if TYPE_CHECKING:``): ``import
a.b``, ``from a import b`` (the submodule ``a.b`` when one exists, else ``a``), relative imports, and lazy imports
(a literal ``importlib.import_module("x")``; in a module that calls ``import_module`` with a computed name, every
string constant that names a scanned module, e.g. the ``_EXPORTS`` table of ``cumulus/client/__init__.py``).

These are direct imports: a rule says what a layer's own code may import, not what is reachable from it.

Patterns in a rule: ``"a.b"`` is the module ``a.b`` and everything under it; ``"a.b*"`` every module whose name
starts with ``a.b``; ``"=a.b"`` the module ``a.b`` only (for a package: its ``__init__``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("cumulus", "worker_image")  # top-level folders; module names are their dotted paths


@dataclass(frozen=True)
class Rule:
    key: str
    text: str  # the rule as the failure message states it
    importers: tuple[str, ...]  # modules the rule applies to
    forbidden: tuple[str, ...]  # what they must not import ...
    allowed: tuple[str, ...] = ()  # ... except these
    only_names: tuple[tuple[str, frozenset[str]], ...] = ()  # (allowed module, the only names that may come from it)


RUNTIME = ("=cumulus.actors", "cumulus.actors.base", "cumulus.actors.childspec", "cumulus.actors.ownership",
           "cumulus.asyncio_bridge")

RULES = (
    Rule(
        "sdk",
        "the SDK (cumulus.client) never imports the server side: cumulus.actors, cumulus.resources, "
        "cumulus.supervisor, cumulus.app, cumulus.journal, cumulus.backends, cumulus.rpc.servicer, cumulus.rpc.server "
        "(it may import cumulus.rpc.generated, cumulus.errors, cumulus.jobformat, cumulus._version)",
        importers=("cumulus.client",),
        forbidden=("cumulus.actors", "cumulus.resources", "cumulus.supervisor", "cumulus.app", "cumulus.journal",
                   "cumulus.backends", "cumulus.rpc.servicer", "cumulus.rpc.server"),
    ),
    Rule(
        "rpc",
        "the RPC layer (cumulus.rpc) and the web dashboard it serves (cumulus.dashboard) never import the SDK "
        "(cumulus.client)",
        importers=("cumulus.rpc", "cumulus.dashboard"),
        forbidden=("cumulus.client",),
    ),
    Rule(
        "dashboard",
        "the web dashboard (cumulus.dashboard) reads the supervisor only through its API (cumulus.app's "
        "SupervisorApi), as the RPC servicer does: it never imports the actors (cumulus.actors), the journal "
        "(cumulus.journal), the resources (cumulus.resources), the backends (cumulus.backends) nor the supervision "
        "tree (cumulus.supervisor)",
        importers=("cumulus.dashboard",),
        forbidden=("cumulus.actors", "cumulus.journal", "cumulus.resources", "cumulus.backends", "cumulus.supervisor"),
    ),
    Rule(
        "actors-wire",
        "actors (cumulus.actors) never import wire types: cumulus.rpc, grpc, google.protobuf",
        importers=("cumulus.actors",),
        forbidden=("cumulus.rpc", "grpc", "google.protobuf"),
    ),
    Rule(
        "resources",
        "resources (cumulus.resources) never import actors (cumulus.actors, the actor runtime cumulus.actors.base "
        "and cumulus.actors.ownership included) nor the supervisor (cumulus.supervisor)",
        importers=("cumulus.resources",),
        forbidden=("cumulus.actors", "cumulus.supervisor"),
    ),
    Rule(
        "runtime",
        "the actor runtime (the cumulus.actors package __init__, which every import of the runtime runs; "
        "cumulus.actors.base, cumulus.actors.childspec, cumulus.actors.ownership, cumulus.asyncio_bridge) and the supervisor "
        "(cumulus.supervisor) import no job logic: from cumulus they import only the runtime, the supervisor and "
        "cumulus.errors (so not cumulus.jobs, cumulus.actors.job*, cumulus.actors.cluster, cumulus.actors.scheduler, "
        "cumulus.actors.worker, cumulus.resources, cumulus.backends, cumulus.journal, cumulus.rpc, nor anything "
        "else of cumulus)",
        importers=(*RUNTIME, "cumulus.supervisor"),
        forbidden=("cumulus",),
        allowed=(*RUNTIME, "cumulus.supervisor", "cumulus.errors"),
    ),
    Rule(
        "journal",
        "the journal (cumulus.journal) calls no actor: from cumulus.actors it imports only the name Actor from "
        "cumulus.actors.base (to be an actor itself), and it imports neither cumulus.supervisor nor cumulus.app",
        importers=("cumulus.journal",),
        forbidden=("cumulus.actors", "cumulus.supervisor", "cumulus.app"),
        allowed=("=cumulus.actors.base",),
        only_names=(("cumulus.actors.base", frozenset({"Actor"})),),
    ),
    Rule(
        "worker-image",
        "the worker image (worker_image/) imports nothing from cumulus",
        importers=("worker_image",),
        forbidden=("cumulus",),
    ),
)

# Violations on today's code that another engineer is fixing now, as (importer, imported). The test fails if one
# of them no longer occurs, so that this list only shrinks, to empty. It held ("cumulus.rpc.convert",
# "cumulus.client.packaging") until d0c882a moved package validation into cumulus.jobformat; empty since.
KNOWN_VIOLATIONS_BEING_FIXED: frozenset[tuple[str, str]] = frozenset()


# ---- the checker --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: str  # relative to the scanned root
    line: int
    names: tuple[str, ...] | None = None  # `from m import a, b`: ("a", "b"); None: the whole module


@dataclass(frozen=True)
class Violation:
    rule: Rule
    found: Import

    def __str__(self) -> str:
        names = f" (names {', '.join(self.found.names)})" if self.found.names else ""
        return f"{self.found.importer} -> {self.found.imported}{names}  at {self.found.path}:{self.found.line}"


@dataclass
class Tree:
    modules: dict[str, Path] = field(default_factory=dict)  # module name -> file
    packages: set[str] = field(default_factory=set)  # module names that are a package's __init__
    imports: list[Import] = field(default_factory=list)


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def scan(root: Path, tops: tuple[str, ...] = SCANNED) -> Tree:
    """Parse every ``*.py`` under ``root/<top>`` and collect its imports, resolved to module names."""
    tree = Tree()
    files = sorted(p for top in tops for p in (root / top).rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        name, is_package = module_name(root, path)
        tree.modules[name] = path
        if is_package:
            tree.packages.add(name)
    for name, path in tree.modules.items():
        tree.imports.extend(_imports_of(root, tree, name, path))
    return tree


def _imports_of(root: Path, tree: Tree, name: str, path: Path) -> list[Import]:
    rel = str(path.relative_to(root))
    syntax = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    package = name if name in tree.packages else name.rpartition(".")[0]
    found: list[Import] = []
    computed_lazy_import = False
    for node in ast.walk(syntax):
        if isinstance(node, ast.Import):
            found.extend(Import(name, alias.name, rel, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts) or (node.level - 1 == len(parts) and not node.module):
                    raise AssertionError(f"{rel}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            plain = [a.name for a in node.names if f"{base}.{a.name}" not in tree.modules]
            if plain:  # names defined in (or re-exported by) the module `base` itself
                found.append(Import(name, base, rel, node.lineno, tuple(plain)))
            found.extend(Import(name, f"{base}.{a.name}", rel, node.lineno)  # submodules: `from pkg import mod`
                         for a in node.names if f"{base}.{a.name}" in tree.modules)
        elif isinstance(node, ast.Call) and _is_import_call(node.func):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append(Import(name, node.args[0].value, rel, node.lineno))
            else:
                computed_lazy_import = True
    if computed_lazy_import:  # a lazy-export table: the module names it holds are what it imports
        found.extend(Import(name, node.value, rel, node.lineno) for node in ast.walk(syntax)
                     if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in tree.modules
                     and node.value != name)
    return found


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def matches(module: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return module.startswith(pattern[:-1])
    if pattern.startswith("="):
        return module == pattern[1:]
    return module == pattern or module.startswith(pattern + ".")


def check(tree: Tree, rules: tuple[Rule, ...] = RULES) -> list[Violation]:
    violations = []
    for found in tree.imports:
        for rule in rules:
            if not any(matches(found.importer, p) for p in rule.importers):
                continue
            if not any(matches(found.imported, p) for p in rule.forbidden):
                continue
            if any(matches(found.imported, p) for p in rule.allowed):
                only = dict(rule.only_names).get(found.imported)
                if only is None or (found.names is not None and set(found.names) <= only):
                    continue
            violations.append(Violation(rule, found))
    return violations


def report(violations: list[Violation]) -> str:
    lines = []
    for rule in RULES:
        mine = [v for v in violations if v.rule is rule]
        if mine:
            lines.append(f"rule [{rule.key}]: {rule.text}")
            lines.extend(f"    {v}" for v in sorted(mine, key=lambda v: (v.found.path, v.found.line)))
    return "\n".join(lines)


# ---- the rules on the real tree ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tree() -> Tree:
    return scan(REPO)


def unexpected(violations: list[Violation], known: frozenset[tuple[str, str]]) -> list[Violation]:
    return [v for v in violations if (v.found.importer, v.found.imported) not in known]


def fixed(violations: list[Violation], known: frozenset[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(known - {(v.found.importer, v.found.imported) for v in violations})


def test_no_forbidden_imports(real_tree):
    found = unexpected(check(real_tree), KNOWN_VIOLATIONS_BEING_FIXED)
    assert not found, "forbidden imports (importer -> imported at file:line):\n" + report(found)


def test_known_violations_still_exist(real_tree):
    """The allowlist only shrinks: once a known violation is fixed, its entry must go."""
    gone = fixed(check(real_tree), KNOWN_VIOLATIONS_BEING_FIXED)
    assert not gone, ("these imports are gone: remove them from KNOWN_VIOLATIONS_BEING_FIXED in "
                      f"tests/test_import_rules.py: {gone}")


def test_the_checker_sees_the_whole_tree(real_tree):
    """Guards against a checker that passes because it parses nothing (wrong root, broken resolution)."""
    assert len(real_tree.modules) >= 50
    for package in ("cumulus", "cumulus.actors", "cumulus.client", "cumulus.resources", "cumulus.rpc"):
        assert package in real_tree.packages
    for rule in RULES:  # no rule is vacuous: each names modules that exist
        for pattern in rule.importers:
            assert any(matches(m, pattern) for m in real_tree.modules), f"rule [{rule.key}]: no module {pattern}"
    imports = {(i.importer, i.imported) for i in real_tree.imports}
    assert ("cumulus.supervisor", "cumulus.actors.base") in imports  # from-import
    assert ("cumulus.journal", "cumulus.actors.base") in imports  # the journal's one allowed actor import
    assert ("cumulus.client", "cumulus.client.remote") in imports  # the lazy-export table
    assert any(importer.startswith("cumulus.client.") and imported == "cumulus.rpc.generated.v1.cumulus_pb2"
               for importer, imported in imports)  # `from pkg import mod`
    assert any(i.importer.startswith("worker_image.") and i.imported == "cloudpickle" for i in real_tree.imports)


# ---- each rule can fail: a synthetic tree ---------------------------------------------------------------------------

# (rule, importer, source, imported as reported). Every module named here is created in the synthetic tree.
FORBIDDEN_CASES = [
    ("sdk", "cumulus.client.client", "import cumulus.actors.base", "cumulus.actors.base"),
    ("sdk", "cumulus.client.remote", "from cumulus.resources import swarm", "cumulus.resources.swarm"),
    ("sdk", "cumulus.client.types", "from ..supervisor import Supervisor", "cumulus.supervisor"),
    ("sdk", "cumulus.client.cli", "from cumulus import app", "cumulus.app"),
    ("sdk", "cumulus.client.cli", "def f():\n    from cumulus.journal import Journal\n", "cumulus.journal"),
    ("sdk", "cumulus.client.health", "import cumulus.backends as backends", "cumulus.backends"),
    ("sdk", "cumulus.client.client", "from cumulus.rpc import servicer", "cumulus.rpc.servicer"),
    ("sdk", "cumulus.client.client", "from cumulus.rpc.server import serve_grpc", "cumulus.rpc.server"),
    ("sdk", "cumulus.client.types", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from cumulus.actors.base import ActorRef\n", "cumulus.actors.base"),
    ("sdk", "cumulus.client", "import importlib\n_EXPORTS = {'x': 'cumulus.actors.base'}\n"
                              "def f(m):\n    return importlib.import_module(m)\n", "cumulus.actors.base"),
    ("sdk", "cumulus.client.remote", "import importlib\nimportlib.import_module('cumulus.app')\n", "cumulus.app"),
    ("rpc", "cumulus.rpc.convert", "from cumulus.client.packaging import validate", "cumulus.client.packaging"),
    ("rpc", "cumulus.rpc.servicer", "from ..client import packaging", "cumulus.client.packaging"),
    ("rpc", "cumulus.rpc.generated.v1.cumulus_pb2", "import cumulus.client", "cumulus.client"),
    ("rpc", "cumulus.dashboard.app", "from cumulus.client import CumulusClient", "cumulus.client"),
    ("rpc", "cumulus.dashboard", "from ..client import connection", "cumulus.client.connection"),
    ("dashboard", "cumulus.dashboard.app", "from cumulus.actors.cluster import ListJobs", "cumulus.actors.cluster"),
    ("dashboard", "cumulus.dashboard.app", "from cumulus import journal", "cumulus.journal"),
    ("dashboard", "cumulus.dashboard", "from ..resources.swarm import SwarmError", "cumulus.resources.swarm"),
    ("dashboard", "cumulus.dashboard.app", "import cumulus.backends", "cumulus.backends"),
    ("dashboard", "cumulus.dashboard.app", "from cumulus.supervisor import Supervisor", "cumulus.supervisor"),
    ("actors-wire", "cumulus.actors.job", "import grpc", "grpc"),
    ("actors-wire", "cumulus.actors.cluster", "from google.protobuf import timestamp_pb2", "google.protobuf"),
    ("actors-wire", "cumulus.actors.worker", "from cumulus.rpc.generated.v1 import cumulus_pb2",
     "cumulus.rpc.generated.v1.cumulus_pb2"),
    ("actors-wire", "cumulus.actors.scheduler", "from ..rpc import convert", "cumulus.rpc.convert"),
    ("resources", "cumulus.resources.swarm", "from cumulus.actors.base import Actor", "cumulus.actors.base"),
    ("resources", "cumulus.resources.ssh", "from cumulus.actors.ownership import ResourceOwner",
     "cumulus.actors.ownership"),
    ("resources", "cumulus.resources.files", "from ..supervisor import ChildSpec", "cumulus.supervisor"),
    ("resources", "cumulus.resources", "from cumulus.actors import job", "cumulus.actors.job"),
    ("runtime", "cumulus.supervisor", "from cumulus.jobs import JobRecord", "cumulus.jobs"),
    ("runtime", "cumulus.actors.base", "from cumulus.actors.job import JobActor", "cumulus.actors.job"),
    ("runtime", "cumulus.actors.base", "from . import jobqueue", "cumulus.actors.jobqueue"),
    ("runtime", "cumulus.actors.ownership", "from .cluster import ClusterActor", "cumulus.actors.cluster"),
    ("runtime", "cumulus.asyncio_bridge", "from cumulus.actors.scheduler import Scheduler",
     "cumulus.actors.scheduler"),
    ("runtime", "cumulus.supervisor", "from cumulus.actors.worker import WorkerActor", "cumulus.actors.worker"),
    ("runtime", "cumulus.actors", "from ..resources import swarm", "cumulus.resources.swarm"),
    ("runtime", "cumulus.supervisor", "import cumulus.backends", "cumulus.backends"),
    ("runtime", "cumulus.supervisor", "def f():\n    from cumulus.journal import Journal\n", "cumulus.journal"),
    ("runtime", "cumulus.actors.base", "from cumulus.rpc import status", "cumulus.rpc.status"),
    ("runtime", "cumulus.asyncio_bridge", "from cumulus.config import Settings", "cumulus.config"),
    ("journal", "cumulus.journal", "from cumulus.actors.cluster import ClusterActor", "cumulus.actors.cluster"),
    ("journal", "cumulus.journal", "from cumulus.actors.base import Actor, ActorRef", "cumulus.actors.base"),
    ("journal", "cumulus.journal", "import cumulus.actors.base", "cumulus.actors.base"),
    ("journal", "cumulus.journal", "from cumulus.actors import Actor", "cumulus.actors"),
    ("journal", "cumulus.journal", "from cumulus.supervisor import Supervisor", "cumulus.supervisor"),
    ("journal", "cumulus.journal", "from cumulus.app import open_supervisor", "cumulus.app"),
    ("worker-image", "worker_image.inventory", "import cumulus", "cumulus"),
    ("worker-image", "worker_image.image.runner", "from cumulus.client.packaging import unpack",
     "cumulus.client.packaging"),
]

ALLOWED_CASES = [
    ("cumulus.dashboard.app", "from cumulus.app import open_supervisor\nfrom cumulus.jobs import JobRecord\n"
                              "from cumulus.rpc.status import status_for\nfrom cumulus.errors import NotFound\n"),
    ("cumulus.client.client", "from cumulus.rpc.generated.v1 import cumulus_pb2"),
    ("cumulus.client.client", "from cumulus.errors import CumulusError\nfrom cumulus.jobformat import check\n"
                              "from cumulus._version import __version__\nimport grpc\n"),
    ("cumulus.rpc.servicer", "from cumulus.errors import CumulusError\nfrom . import convert\n"),
    ("cumulus.actors.job", "from cumulus.jobs import JobRecord\nfrom cumulus.resources import swarm\n"
                           "from .base import Actor\n"),
    ("cumulus.resources.swarm", "from cumulus.errors import CumulusError\nfrom .files import check_job_id\n"),
    ("cumulus.supervisor", "from cumulus.actors.base import Actor\nfrom cumulus.actors.ownership import Leak\n"
                           "from cumulus.errors import NotFound\n"),
    ("cumulus.actors", "from cumulus.actors.base import Actor\nfrom .ownership import ResourceOwner\n"),
    ("cumulus.actors.base", "from cumulus.actors.ownership import ResourceOwner\nfrom cumulus import errors\n"),
    ("cumulus.journal", "from cumulus.actors.base import Actor\nfrom cumulus.jobs import JobRecord\n"),
    ("worker_image.image.runner", "import cloudpickle\nimport msgpack\n"),
]

# The modules of the synthetic tree (packages get an __init__.py).
SYNTHETIC = sorted({
    "cumulus", "cumulus._version", "cumulus.app", "cumulus.asyncio_bridge", "cumulus.backends", "cumulus.config",
    "cumulus.errors", "cumulus.jobformat", "cumulus.jobs", "cumulus.journal", "cumulus.supervisor",
    "cumulus.actors", "cumulus.actors.base", "cumulus.actors.cluster", "cumulus.actors.job",
    "cumulus.actors.jobqueue", "cumulus.actors.ownership", "cumulus.actors.scheduler", "cumulus.actors.worker",
    "cumulus.client", "cumulus.client.cli", "cumulus.client.client", "cumulus.client.health",
    "cumulus.client.packaging", "cumulus.client.remote", "cumulus.client.types", "cumulus.client.connection",
    "cumulus.dashboard", "cumulus.dashboard.app",
    "cumulus.resources", "cumulus.resources.files", "cumulus.resources.ssh", "cumulus.resources.swarm",
    "cumulus.rpc", "cumulus.rpc.convert", "cumulus.rpc.servicer", "cumulus.rpc.server", "cumulus.rpc.status",
    "cumulus.rpc.generated", "cumulus.rpc.generated.v1", "cumulus.rpc.generated.v1.cumulus_pb2",
    "worker_image.inventory", "worker_image.image.runner",
})


def synthetic_tree(root: Path, sources: dict[str, str]) -> Tree:
    """Write the synthetic tree under ``root`` with ``sources`` (module -> code; the others are empty); scan it."""
    packages = {m.rpartition(".")[0] for m in SYNTHETIC} - {""}
    for module in SYNTHETIC:
        parts = module.split(".")
        path = root.joinpath(*parts, "__init__.py") if module in packages else root.joinpath(*parts[:-1],
                                                                                             parts[-1] + ".py")
        if module.startswith("worker_image") and module in packages:
            continue  # the worker image is no package: its folders have no __init__.py
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sources.get(module, ""))
    return scan(root)


@pytest.mark.parametrize(("key", "importer", "source", "imported"), FORBIDDEN_CASES,
                         ids=[f"{c[0]}:{c[1]}->{c[3]}" for c in FORBIDDEN_CASES])
def test_each_forbidden_import_is_reported(tmp_path, key, importer, source, imported):
    tree = synthetic_tree(tmp_path, {importer: '"""a module"""\n\n' + source})
    violations = check(tree)
    # the rule reports it (another rule may too: cumulus.actors.base is both runtime and an actor); nothing else is
    assert (key, importer, imported) in [(v.rule.key, v.found.importer, v.found.imported) for v in violations]
    assert {(v.found.importer, v.found.imported) for v in violations} == {(importer, imported)}
    [violation] = [v for v in violations if v.rule.key == key]
    last = imported.rpartition(".")[2]  # the reported line is the first that names what it imports
    line = 3 + next(i for i, text in enumerate(source.splitlines()) if last in text)
    assert violation.found.line == line
    assert f"{importer} -> {imported}" in str(violation) and f":{line}" in str(violation)
    assert f"rule [{key}]" in report(violations)


def test_the_allowlist_hides_only_its_entries_and_reports_stale_ones(tmp_path):
    tree = synthetic_tree(tmp_path, {"cumulus.rpc.convert": "from cumulus.client.packaging import validate\n",
                                     "cumulus.rpc.servicer": "from cumulus.client import packaging\n"})
    violations = check(tree)
    known = frozenset({("cumulus.rpc.convert", "cumulus.client.packaging"), ("cumulus.rpc.status", "cumulus.client")})
    assert [(v.found.importer, v.found.imported) for v in unexpected(violations, known)] == [
        ("cumulus.rpc.servicer", "cumulus.client.packaging")]
    assert fixed(violations, known) == [("cumulus.rpc.status", "cumulus.client")]


def test_every_rule_has_a_failing_case():
    assert {case[0] for case in FORBIDDEN_CASES} == {rule.key for rule in RULES}


@pytest.mark.parametrize(("importer", "source"), ALLOWED_CASES, ids=[c[0] for c in ALLOWED_CASES])
def test_allowed_imports_are_not_reported(tmp_path, importer, source):
    tree = synthetic_tree(tmp_path, {importer: source})
    assert any(i.importer == importer for i in tree.imports)  # it did see them
    assert check(tree) == []


def test_the_synthetic_tree_resolves_like_python(tmp_path):
    source = ("from . import base\nfrom .. import errors\nfrom ..rpc.generated import v1\nimport cumulus.jobs as j\n"
              "from cumulus.actors.base import Actor, ActorRef\n")
    tree = synthetic_tree(tmp_path, {"cumulus.actors.job": source, "cumulus.actors": "from .base import Actor\n"})
    assert {(i.importer, i.imported, i.line, i.names) for i in tree.imports} == {
        ("cumulus.actors.job", "cumulus.actors.base", 1, None),
        ("cumulus.actors.job", "cumulus.errors", 2, None),
        ("cumulus.actors.job", "cumulus.rpc.generated.v1", 3, None),
        ("cumulus.actors.job", "cumulus.jobs", 4, None),
        ("cumulus.actors.job", "cumulus.actors.base", 5, ("Actor", "ActorRef")),
        ("cumulus.actors", "cumulus.actors.base", 1, ("Actor",)),  # relative to the package itself
    }
