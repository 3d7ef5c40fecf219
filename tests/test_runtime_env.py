"""Runtime environments without a cluster (issue 17): local modules wherever they live
(``cumulus.client.collect``), the ``py_modules``/``working_dir``/``files`` options
(``cumulus.client.runtime_env``), the format-2 package with its files area (``cumulus.client.packaging``,
``cumulus.jobformat``), its extraction by the worker's runner (``worker_image/image/runner_package.py``, and
``runner.py`` run as a subprocess), the options' shapes (``cumulus.remote``/``.options``) and the ``cumulus submit``
flags (``cumulus.client.cli_submit``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import cloudpickle
import pytest

import cumulus
from cumulus.client import packaging as pk
from cumulus.client.cli_submit import add_submit_flags, submit_request
from cumulus.client.options import normalize_options
from cumulus.client.runtime_env import RESERVED_MEMBERS, collect_runtime_env
from cumulus.errors import InvalidRequest, PackageTooLarge

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "worker_image" / "image"
RUNNER = IMAGE / "runner.py"
MAX = pk.MAX_PACKAGE_BYTES


def _load_runner_package():
    """``worker_image/image/runner_package.py`` (standalone: the stdlib only) under a name of its own."""
    spec = importlib.util.spec_from_file_location("cumulus_image_runner_package_rtenv", IMAGE / "runner_package.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner_package = _load_runner_package()


# ---- helpers ---------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_modules():
    """Names of modules a test imports from its tmp_path: removed from sys.modules before and after."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def unpack(data: bytes) -> tuple[dict, zipfile.ZipFile]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return json.loads(zf.read(pk.MANIFEST)), zf


def names_in(data: bytes) -> set[str]:
    return set(zipfile.ZipFile(io.BytesIO(data)).namelist())


def import_from(fresh_modules: list[str], monkeypatch, directory: Path, name: str):
    monkeypatch.syspath_prepend(str(directory))
    for mod in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
        sys.modules.pop(mod)
    fresh_modules.append(name)
    return importlib.import_module(name)


def env(**options):
    return collect_runtime_env(max_bytes=MAX, **options)


def with_manifest(data: bytes, change) -> bytes:
    """The package ``data`` with its manifest changed by ``change(manifest)``, every other entry kept."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == pk.MANIFEST:
                manifest = json.loads(body)
                change(manifest)
                body = json.dumps(manifest).encode()
            dst.writestr(info, body)
    return out.getvalue()


# ---- local modules wherever they live (cumulus.client.collect) -------------------------------------------------


@pytest.fixture
def split_project(tmp_path, monkeypatch, fresh_modules):
    """A script directory whose job module uses ``rtenv_helpers`` imported from ANOTHER directory on sys.path
    (neither under the other: the old default root, the script's directory, would not see the helper)."""
    script, lib = tmp_path / "scripts", tmp_path / "elsewhere" / "lib"
    write(lib / "rtenv_helpers.py", """
        class Celsius:
            def __init__(self, degrees):
                self.degrees = degrees

            def fahrenheit(self):
                return self.degrees * 9 / 5 + 32

        def double(x):
            return 2 * x
    """)
    write(script / "rtenv_script.py", """
        import rtenv_helpers

        def job(x):
            return rtenv_helpers.double(x), rtenv_helpers.Celsius(x).fahrenheit()
    """)
    import_from(fresh_modules, monkeypatch, lib, "rtenv_helpers")
    return import_from(fresh_modules, monkeypatch, script, "rtenv_script"), script, lib


def test_a_helper_module_from_another_directory_on_sys_path_is_shipped(split_project, monkeypatch):
    script_mod, script, lib = split_project
    data = pk.build_package(script_mod.job, (100,))
    manifest, zf = unpack(data)
    assert "src/rtenv_helpers.py" in manifest["modules"] and "src/rtenv_script.py" in manifest["modules"]
    assert zf.read("src/rtenv_helpers.py") == (lib / "rtenv_helpers.py").read_bytes()
    assert manifest["format"] == 1  # no files area
    assert cloudpickle.list_registry_pickle_by_value() == set()  # registrations undone

    # Unpickled where neither directory is importable, as on a worker: the helper came by value.
    raw = zf.read(pk.CALL)
    for name in ("rtenv_helpers", "rtenv_script"):
        sys.modules.pop(name, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(script), str(lib))])
    func, args, kwargs = cloudpickle.loads(raw)
    assert func(*args, **kwargs) == (200, 212.0)
    assert "rtenv_helpers" not in sys.modules


def test_an_explicit_project_root_still_limits_the_modules_to_it(split_project):
    script_mod, script, _ = split_project
    manifest, _ = unpack(pk.build_package(script_mod.job, (1,), project_root=script))
    assert manifest["modules"] == ["src/rtenv_script.py"]


def test_installed_code_is_not_shipped(tmp_path, monkeypatch, fresh_modules):
    venv = tmp_path / "myenv"  # not a name of EXCLUDED_DIRS: only its pyvenv.cfg says it is a virtualenv
    write(venv / "pyvenv.cfg", "home = /usr/bin\n")
    write(venv / "lib" / "rtenv_vendored.py", "def f():\n    return 1\n")
    write(venv / "src" / "rtenv_editable.py", "def f():\n    return 2\n")  # pip's editable VCS checkouts
    write(venv / "rtenv_beside.py", "def f():\n    return 3\n")  # the caller's code kept in the venv's dir
    write(tmp_path / "sys" / "site-packages" / "rtenv_sitepkg.py", "def f():\n    return 4\n")
    write(tmp_path / "code" / "rtenv_local.py", "def f():\n    return 5\n")
    vendored = import_from(fresh_modules, monkeypatch, venv / "lib", "rtenv_vendored")
    editable = import_from(fresh_modules, monkeypatch, venv / "src", "rtenv_editable")
    beside = import_from(fresh_modules, monkeypatch, venv, "rtenv_beside")
    sitepkg = import_from(fresh_modules, monkeypatch, tmp_path / "sys" / "site-packages", "rtenv_sitepkg")
    local = import_from(fresh_modules, monkeypatch, tmp_path / "code", "rtenv_local")

    def job():
        return vendored.f() + editable.f() + beside.f() + sitepkg.f() + local.f() + len(json.dumps(1)) + len(
            pytest.__name__) + len(cumulus.__name__)

    modules = unpack(pk.build_package(job))[0]["modules"]
    assert "src/rtenv_beside.py" in modules and "src/rtenv_local.py" in modules
    top_level = {m.removeprefix(pk.SRC).split("/")[0].removesuffix(".py") for m in modules}
    for installed in ("rtenv_vendored", "rtenv_editable", "rtenv_sitepkg", "json", "pytest", "_pytest", "cumulus"):
        assert installed not in top_level, modules


def test_a_module_missing_from_sys_modules_is_pickled_by_value_and_what_it_reaches_is_shipped(
        tmp_path, monkeypatch, fresh_modules):
    """A module made with module_from_spec and kept out of sys.modules (a plugin loaded by path): cloudpickle
    pickles it by value by itself and refuses to register it; the local module it imports is still shipped."""
    lib = tmp_path / "lib"
    write(lib / "rtenv_reached.py", "def triple(x):\n    return 3 * x\n")
    plugin_file = write(tmp_path / "plugins" / "rtenv_plugin.py", """
        import rtenv_reached

        def run(x):
            return rtenv_reached.triple(x) + 1
    """)
    import_from(fresh_modules, monkeypatch, lib, "rtenv_reached")
    spec = importlib.util.spec_from_file_location("rtenv_plugin", plugin_file)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    assert "rtenv_plugin" not in sys.modules

    def job(x):
        return plugin.run(x)

    manifest, zf = unpack(pk.build_package(job, (2,)))
    assert "src/rtenv_reached.py" in manifest["modules"]
    assert not [m for m in manifest["modules"] if "rtenv_plugin" in m]
    sys.modules.pop("rtenv_reached")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(lib)])
    func, args, kwargs = cloudpickle.loads(zf.read(pk.CALL))
    assert func(*args, **kwargs) == 7


# ---- py_modules ---------------------------------------------------------------------------------------------


@pytest.fixture
def mods(tmp_path, monkeypatch, fresh_modules):
    """Modules to give to py_modules, none of which the job function uses, in a directory on sys.path; the
    current directory is tmp_path."""
    lib = tmp_path / "lib"
    write(lib / "rtenv_single.py", "VALUE = 1\n")
    write(lib / "rtenv_pkg" / "__init__.py", "")
    write(lib / "rtenv_pkg" / "tools.py", "VALUE = 2\n")
    write(lib / "rtenv_pkg" / "inner" / "__init__.py", "")
    write(lib / "rtenv_pkg" / "inner" / "deep.py", "VALUE = 3\n")
    write(lib / "rtenv_pkg" / "inner" / "table.csv", "a,b\n")
    write(lib / "rtenv_pkg" / "inner" / "__pycache__" / "deep.cpython-311.pyc", "junk")
    write(lib / "rtenv_pkg" / "inner" / "stale.pyc", "junk")
    write(tmp_path / "scripts" / "rtenv_tool.py", "VALUE = 4\n")
    write(tmp_path / "notes.txt", "not code\n")
    write(tmp_path / "my-mod.py", "VALUE = 5\n")
    monkeypatch.syspath_prepend(str(lib))
    fresh_modules += ["rtenv_single", "rtenv_pkg", "rtenv_pkg.tools", "rtenv_pkg.inner", "rtenv_pkg.inner.deep"]
    for name in fresh_modules:
        sys.modules.pop(name, None)
    monkeypatch.chdir(tmp_path)
    return lib


def shipped_sources(**options) -> list[str]:
    data = pk.build_package(len, ("abc",), **options)  # len: no module of the caller's is reached
    manifest, zf = unpack(data)
    assert sorted(n for n in zf.namelist() if n.startswith(pk.SRC)) == manifest["modules"]
    return manifest["modules"]


def test_py_modules_by_module_object(mods):
    single = importlib.import_module("rtenv_single")
    deep = importlib.import_module("rtenv_pkg.inner.deep")
    inner = importlib.import_module("rtenv_pkg.inner")
    assert shipped_sources(py_modules=[single]) == ["src/rtenv_single.py"]
    assert shipped_sources(py_modules=[deep]) == ["src/rtenv_pkg/__init__.py", "src/rtenv_pkg/inner/__init__.py",
                                                  "src/rtenv_pkg/inner/deep.py"]
    # a package goes whole (its data files too), with its parents' __init__.py; never caches or *.pyc
    assert shipped_sources(py_modules=inner) == ["src/rtenv_pkg/__init__.py", "src/rtenv_pkg/inner/__init__.py",
                                                 "src/rtenv_pkg/inner/deep.py", "src/rtenv_pkg/inner/table.csv"]


def test_py_modules_by_dotted_name(mods):
    assert shipped_sources(py_modules=["rtenv_single"]) == ["src/rtenv_single.py"]
    assert shipped_sources(py_modules=["rtenv_pkg.tools"]) == ["src/rtenv_pkg/__init__.py",
                                                               "src/rtenv_pkg/tools.py"]


def test_py_modules_by_path_of_a_py_file_or_package_directory(mods, tmp_path):
    assert shipped_sources(py_modules=["scripts/rtenv_tool.py"]) == ["src/rtenv_tool.py"]
    assert shipped_sources(py_modules=[tmp_path / "scripts" / "rtenv_tool.py"]) == ["src/rtenv_tool.py"]
    assert shipped_sources(py_modules=[str(mods / "rtenv_pkg")]) == [
        "src/rtenv_pkg/__init__.py", "src/rtenv_pkg/inner/__init__.py", "src/rtenv_pkg/inner/deep.py",
        "src/rtenv_pkg/inner/table.csv", "src/rtenv_pkg/tools.py"]
    # a subpackage's directory given by path ships as a top-level package of its directory's name
    assert shipped_sources(py_modules=[str(mods / "rtenv_pkg" / "inner")]) == [
        "src/inner/__init__.py", "src/inner/deep.py", "src/inner/table.csv"]


def test_py_modules_by_module_object_of_a_subpackage_includes_the_parent_init(mods):
    inner = importlib.import_module("rtenv_pkg.inner")
    sources = shipped_sources(py_modules=[inner])
    assert "src/rtenv_pkg/__init__.py" in sources and "src/rtenv_pkg/tools.py" not in sources


@pytest.mark.parametrize("given, words", [
    ("json", "json is part of the standard library; every worker has it, remove it from py_modules"),
    ("sys", "sys is built into the interpreter"),
    ("cumulus", "the cumulus package is never shipped"),
    ("cumulus.client.runtime_env", "the cumulus package is never shipped"),
    ("missing/nowhere.py", "'missing/nowhere.py' does not exist (relative paths start at the current directory"),
    ("rtenv_no_such_module", "is neither an existing path (from the current directory"),
    ("notes.txt", "is not a .py file; give a Python module (a .py file or a package directory), or ship data "
                  "with files="),
    ("my-mod.py", "'my-mod' is not a valid module name, so it could not be imported remotely"),
])
def test_py_modules_refusals_say_what_to_change(mods, given, words):
    with pytest.raises(InvalidRequest) as info:
        pk.build_package(len, ("abc",), py_modules=[given])
    assert f"py_modules: {given!r}" in str(info.value) and words in str(info.value)


def test_py_modules_refuses_module_objects_of_the_stdlib_and_of_cumulus(mods):
    import cumulus.client.collect
    import email.mime

    with pytest.raises(InvalidRequest, match="email.mime is part of the standard library"):
        env(py_modules=[email.mime])
    with pytest.raises(InvalidRequest, match="py_modules: cumulus.client.collect: the cumulus package is never"):
        env(py_modules=[cumulus.client.collect])
    with pytest.raises(InvalidRequest, match="the cumulus package is never shipped"):  # by path
        env(py_modules=[str(REPO / "cumulus" / "client")])
    with pytest.raises(InvalidRequest, match="py_modules: 'os.path': os.path is built into the interpreter"):
        env(py_modules=["os.path"])  # frozen: no file either, but every worker has it


def test_py_modules_refuses_a_module_without_a_file_saying_so():
    import types

    made = types.ModuleType("rtenv_made_at_run_time")
    with pytest.raises(InvalidRequest) as info:
        env(py_modules=[made])
    assert "rtenv_made_at_run_time has no file to ship" in str(info.value)
    assert "built into" not in str(info.value)


def test_py_modules_and_a_collected_module_of_the_same_name_are_refused(split_project, tmp_path):
    script_mod, _, lib = split_project
    other = write(tmp_path / "other" / "rtenv_helpers.py", "X = 1\n")
    with pytest.raises(InvalidRequest, match="would both be 'src/rtenv_helpers.py' in the job; ship only one"):
        pk.build_package(script_mod.job, (1,), py_modules=[str(other)])
    # the same file given again is no conflict
    manifest, _ = unpack(pk.build_package(script_mod.job, (1,), py_modules=[str(lib / "rtenv_helpers.py")]))
    assert manifest["modules"].count("src/rtenv_helpers.py") == 1


# ---- files= and working_dir= ----------------------------------------------------------------------------------


@pytest.fixture
def data_tree(tmp_path, monkeypatch):
    """The current directory ``proj`` with a data directory, a config file, and things never shipped."""
    proj = tmp_path / "proj"
    write(proj / "config.json", '{"lr": 0.1}')
    write(proj / "data" / "train.csv", "x,y\n1,2\n")
    write(proj / "data" / "nested" / "deeper" / "more.txt", "more")
    (proj / "data" / "empty").mkdir()
    (proj / "data" / "nested" / "also_empty").mkdir()
    write(proj / "data" / ".git" / "HEAD", "ref")
    write(proj / "data" / "__pycache__" / "x.cpython-311.pyc", "junk")
    write(proj / "data" / "venv" / "lib" / "site.py", "junk")
    write(proj / "data" / "node_modules" / "x.js", "junk")
    write(proj / "data" / "env_with_cfg" / "pyvenv.cfg", "home = /usr\n")
    write(proj / "data" / "env_with_cfg" / "lib" / "x.py", "junk")
    write(proj / "data" / "compiled.pyc", "junk")
    monkeypatch.chdir(proj)
    return proj


def test_files_inside_the_cwd_keep_their_relative_path_directories_recursive(data_tree):
    shipped = env(files=["data/", "config.json"])
    assert sorted(shipped.entries) == ["files/config.json", "files/data/nested/deeper/more.txt",
                                       "files/data/train.csv"]
    assert shipped.dirs == {"files/data/empty/", "files/data/nested/also_empty/"}
    nested = env(files=["data/nested/deeper/more.txt"])
    assert sorted(nested.entries) == ["files/data/nested/deeper/more.txt"]


def test_files_outside_the_cwd_land_under_their_own_name(data_tree, tmp_path):
    write(tmp_path / "shared" / "labels.txt", "cat\ndog\n")
    write(tmp_path / "shared" / "vocab" / "words.txt", "a b")
    shipped = env(files=[str(tmp_path / "shared" / "labels.txt"), "../shared/vocab"])
    assert sorted(shipped.entries) == ["files/labels.txt", "files/vocab/words.txt"]


def test_files_make_a_format_2_package_that_validates_and_extracts_into_the_working_directory(data_tree,
                                                                                            tmp_path):
    data = pk.build_package(len, ("abc",), files=["data", "config.json"])
    manifest, zf = unpack(data)
    assert manifest["format"] == 2
    assert manifest["files"] == ["files/config.json", "files/data/nested/deeper/more.txt", "files/data/train.csv"]
    assert "files/data/empty/" in zf.namelist() and "files/data/nested/also_empty/" in zf.namelist()
    assert not [n for n in zf.namelist() if any(x in n for x in (".git", "__pycache__", "venv", "node_modules",
                                                                 "env_with_cfg", ".pyc"))]
    assert zf.read("files/config.json") == b'{"lr": 0.1}'
    info = pk.validate_package(data)
    assert info.files == manifest["files"]

    package = tmp_path / "code" / "package.zip"
    package.parent.mkdir()
    package.write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    assert runner_package.extract(str(package), str(work))["format"] == 2
    cwd = Path(runner_package.files_area(str(work)))
    assert cwd == work / "files"
    assert json.loads((cwd / "config.json").read_text()) == {"lr": 0.1}
    assert (cwd / "data" / "train.csv").read_text() == "x,y\n1,2\n"
    assert (cwd / "data" / "empty").is_dir() and not list((cwd / "data" / "empty").iterdir())


def test_without_a_files_area_the_package_is_format_1_and_the_runner_makes_an_empty_working_directory(tmp_path):
    data = pk.build_package(len, ("abc",))
    manifest, zf = unpack(data)
    assert manifest["format"] == 1 and "files" not in manifest
    assert not [n for n in zf.namelist() if n.startswith("files")]
    package = tmp_path / "package.zip"
    package.write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    runner_package.extract(str(package), str(work))
    cwd = Path(runner_package.files_area(str(work)))
    assert cwd.is_dir() and not list(cwd.iterdir())


def test_validate_refuses_files_area_entries_in_a_format_1_manifest(data_tree):
    data = pk.build_package(len, ("abc",), files=["config.json"])

    def as_format_1(manifest):
        manifest["format"] = 1
        del manifest["files"]

    with pytest.raises(InvalidRequest, match=r"'files/config.json' is in the files area, which needs format 2"):
        pk.validate_package(with_manifest(data, as_format_1))
    with pytest.raises(InvalidRequest, match=r"'files' needs format 2 \(this manifest says format 1\)"):
        pk.validate_package(with_manifest(data, lambda m: m.update(format=1)))
    with pytest.raises(InvalidRequest, match="is listed but not in the archive"):
        pk.validate_package(with_manifest(data, lambda m: m.update(files=["files/ghost.txt"])))


def test_working_dir_contents_become_the_files_area(tmp_path, monkeypatch):
    wd = tmp_path / "wd"
    write(wd / "rtenv_wd_mod.py", "VALUE = 7\n")
    write(wd / "notes.txt", "hello")
    write(wd / "sub" / "deep.txt", "deep")
    write(wd / ".git" / "HEAD", "ref")
    write(wd / "__pycache__" / "rtenv_wd_mod.cpython-311.pyc", "junk")
    monkeypatch.chdir(tmp_path)
    data = pk.build_package(len, ("abc",), working_dir="wd")
    manifest, zf = unpack(data)
    assert manifest["format"] == 2
    assert manifest["files"] == ["files/notes.txt", "files/rtenv_wd_mod.py", "files/sub/deep.txt"]
    assert "src/rtenv_wd_mod.py" not in zf.namelist()  # importable from the job's cwd, not shipped twice
    assert zf.read("files/rtenv_wd_mod.py") == b"VALUE = 7\n"
    with pytest.raises(InvalidRequest, match=r"working_dir='nowhere' is not a directory \(relative paths start"):
        env(working_dir="nowhere")
    with pytest.raises(InvalidRequest, match="is not a directory"):
        env(working_dir=wd / "notes.txt")


def test_symbolic_links_inside_a_shipped_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "secret.txt", "outside")
    write(tmp_path / "inside" / "real.txt", "real")
    (tmp_path / "inside" / "alias.txt").symlink_to("real.txt")
    assert env(files=["inside"]).entries["files/inside/alias.txt"].real == tmp_path / "inside" / "real.txt"

    write(tmp_path / "leaky" / "ok.txt")
    (tmp_path / "leaky" / "escape.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InvalidRequest, match=r"escape.txt is a symbolic link to .*secret.txt, outside .*leaky; "
                                             r"a link in a shipped directory must stay inside it"):
        env(files=["leaky"])
    with pytest.raises(InvalidRequest, match="outside"):
        env(working_dir="leaky")

    write(tmp_path / "dangling" / "ok.txt")
    (tmp_path / "dangling" / "gone.txt").symlink_to("missing.txt")
    with pytest.raises(InvalidRequest, match="gone.txt is a symbolic link to .*missing.txt, which does not exist"):
        env(files=["dangling"])

    write(tmp_path / "looping" / "sub" / "ok.txt")
    (tmp_path / "looping" / "sub" / "up").symlink_to("..")
    with pytest.raises(InvalidRequest, match="a directory that contains it"):
        env(files=["looping"])

    write(tmp_path / "selfloop" / "ok.txt")
    (tmp_path / "selfloop" / "me").symlink_to("me")
    with pytest.raises(InvalidRequest, match="me is a symbolic link that loops"):
        env(files=["selfloop"])

    # a link given explicitly is followed
    (tmp_path / "direct.txt").symlink_to(tmp_path / "secret.txt")
    assert sorted(env(files=["direct.txt"]).entries) == ["files/direct.txt"]


def test_fifos_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pipes" / "ok.txt")
    os.mkfifo(tmp_path / "pipes" / "fifo")
    with pytest.raises(InvalidRequest, match="fifo is not a regular file or directory"):
        env(files=["pipes"])
    with pytest.raises(InvalidRequest, match=r"files: 'pipes/fifo' is not a regular file or directory \(a FIFO"):
        env(files=["pipes/fifo"])


def test_the_same_archive_name_from_two_files_is_refused(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    a = write(tmp_path / "a" / "data.txt", "a")
    b = write(tmp_path / "b" / "data.txt", "b")
    with pytest.raises(InvalidRequest, match=r"would both be 'files/data.txt' in the job; ship only one of them"):
        env(files=[str(a), str(b)])
    # the same file twice (once by itself, once in its directory) is no conflict
    write(tmp_path / "cwd" / "d" / "x.txt", "x")
    assert sorted(env(files=["d/x.txt", "d", str(tmp_path / "cwd" / "d" / "x.txt")]).entries) == ["files/d/x.txt"]


def test_missing_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidRequest, match=r"files: 'nope.json' does not exist \(relative paths start at the "
                                             r"current directory"):
        pk.build_package(len, ("abc",), files=["nope.json"])


# ---- limits -------------------------------------------------------------------------------------------------


def test_files_over_the_size_cap_raise_package_too_large(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    limit = 64 * 1024
    (tmp_path / "zeros.bin").write_bytes(bytes(9 * limit))  # compresses well, but over 8x the limit raw
    with pytest.raises(PackageTooLarge, match=r"py_modules, working_dir and files add up to .* before "
                                              r"compression; biggest: .*zeros.bin"):
        pk.build_package(len, ("abc",), files=["zeros.bin"], max_bytes=limit)
    (tmp_path / "noise.bin").write_bytes(os.urandom(2 * limit))  # incompressible: over the limit zipped
    with pytest.raises(PackageTooLarge, match=r"biggest files \(compressed\): files/noise.bin .*ship less with "
                                              r"files=/working_dir="):
        pk.build_package(len, ("abc",), files=["noise.bin"], max_bytes=limit)


def test_member_count_budget_raises_invalid_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(4):
        write(tmp_path / "many" / f"f{i}.txt", str(i))
    assert len(collect_runtime_env(files=["many"], max_bytes=MAX, budget=4).entries) == 4
    with pytest.raises(InvalidRequest, match=r"more than 3 files and directories to ship; a package holds at most"):
        collect_runtime_env(files=["many"], max_bytes=MAX, budget=3)
    # build_package gives the runtime env what the package's member limit leaves
    monkeypatch.setattr(pk, "MAX_MEMBERS", RESERVED_MEMBERS + 3)
    with pytest.raises(InvalidRequest, match="more than 3 files and directories to ship"):
        pk.build_package(len, ("abc",), files=["many"])


# ---- the runner runs the job in its files area -------------------------------------------------------------


def reads_its_working_directory():
    import importlib
    import os

    with open("data/points.json") as f:
        points = json.load(f)
    module = importlib.import_module("rtenv_runtime_mod")  # from working_dir, imported by name at run time
    order = importlib.import_module("rtenv_order")  # in both src/ (py_modules) and the files area: src/ first
    return os.path.basename(os.getcwd()), sum(points), module.VALUE, order.WHERE


def test_the_runner_runs_the_job_in_the_files_area(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    write(proj / "data" / "points.json", "[1, 2, 3]")
    write(tmp_path / "wd" / "rtenv_runtime_mod.py", "VALUE = 'from working_dir'\n")
    write(tmp_path / "wd" / "rtenv_order.py", "WHERE = 'files'\n")
    write(tmp_path / "mods" / "rtenv_order.py", "WHERE = 'src'\n")
    monkeypatch.chdir(proj)
    data = pk.build_package(reads_its_working_directory, files=["data"], working_dir=tmp_path / "wd",
                            py_modules=[tmp_path / "mods" / "rtenv_order.py"])
    code, out = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    out.mkdir()
    (code / "package.zip").write_bytes(data)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    environ.update({"CUMULUS_CODE_DIR": str(code), "CUMULUS_OUTPUT_DIR": str(out),
                    "CUMULUS_PIP_CACHE": str(tmp_path / "no-cache")})
    proc = subprocess.run([sys.executable, str(RUNNER)], env=environ, capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    outcome = pk.decode_result((out / "result.msgpack").read_bytes())
    assert outcome.ok, outcome
    assert outcome.value == ("files", 6, "from working_dir", "src")


# ---- options -----------------------------------------------------------------------------------------------


def test_remote_and_options_normalize_the_runtime_env(tmp_path):
    module = sys.modules[__name__]

    @cumulus.remote(py_modules=module, files="data.json", working_dir=tmp_path)
    def f():
        return 1

    assert f.remote_options == {"py_modules": module, "files": "data.json", "working_dir": tmp_path}
    opts = normalize_options(f.remote_options)
    assert opts["py_modules"] == (module,) and opts["files"] == ("data.json",) and opts["working_dir"] == str(tmp_path)
    g = f.options(files=[Path("a.csv"), "data/"], py_modules=["helpers", tmp_path / "lib.py"])
    opts = normalize_options(g.remote_options)
    assert opts["files"] == ("a.csv", "data/") and opts["py_modules"] == ("helpers", str(tmp_path / "lib.py"))
    assert f.remote_options["files"] == "data.json"  # f itself unchanged
    assert f() == 1


@pytest.mark.parametrize("options, words", [
    ({"files": 3}, "files=3: give a list of paths"),
    ({"files": b"data"}, "give a list of paths"),
    ({"files": {"a": 1}}, "give a list of paths"),
    ({"files": ["ok", 3]}, "files=3: give a path"),
    ({"files": [""]}, "give a path"),
    ({"working_dir": ["wd"]}, "working_dir=['wd']: give a path"),
    ({"working_dir": ""}, "give a path"),
    ({"working_dir": 3}, "give a path"),
    ({"py_modules": 3}, "py_modules=3: give a list of modules, module names or paths"),
    ({"py_modules": [None]}, "py_modules=None: give a path"),
    ({"py_modules": b"helpers"}, "give a list of modules"),
])
def test_bad_runtime_env_option_types_are_refused(options, words):
    with pytest.raises(InvalidRequest) as info:
        cumulus.remote(**options)
    assert words in str(info.value)
    with pytest.raises(InvalidRequest):
        cumulus.remote(lambda: 1).options(**options)


# ---- cumulus submit --py-module/--working-dir/--files ------------------------------------------------------


def test_submit_flags_become_the_runtime_env_options(tmp_path, monkeypatch, fresh_modules):
    job = write(tmp_path / "rtenv_cli_job.py", "def run():\n    return 1\n")
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_function puts the file's directory first
    fresh_modules.append("rtenv_cli_job")
    parser = argparse.ArgumentParser()
    add_submit_flags(parser)
    args = parser.parse_args([f"{job}:run", "--py-module", "helpers", "--py-module", "lib/tools.py",
                              "--working-dir", "wd", "--files", "data/", "--files", "config.json"])
    func, call_args, call_kwargs, options = submit_request(args)
    assert func() == 1 and call_args == [] and call_kwargs == {}
    assert options["py_modules"] == ["helpers", "lib/tools.py"]
    assert options["working_dir"] == "wd" and options["files"] == ["data/", "config.json"]
    plain = submit_request(parser.parse_args([f"{job}:run"]))[3]
    assert not {"py_modules", "working_dir", "files"} & set(plain)
