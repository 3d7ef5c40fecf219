"""Job package format (build + validate) and result envelope (decode + re-raise)."""

from __future__ import annotations

import importlib
import io
import json
import stat
import sys
import textwrap
import traceback
import zipfile
from pathlib import Path

import cloudpickle
import msgpack
import pytest

from cumulus.client import packaging as pk
from cumulus.errors import InvalidRequest, PackageTooLarge, RemoteError


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A caller's project: package `proj` with a helper module and a dataclass, a job module using both."""
    root = tmp_path / "myproject"
    (root / "proj").mkdir(parents=True)
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "helpers.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass

        FACTOR = 10

        @dataclass
        class Point:
            x: int
            y: int

        def scale(v):
            return v * FACTOR
    """))
    (root / "proj" / "jobs.py").write_text(textwrap.dedent("""
        from proj import helpers
        from proj.helpers import Point

        def job(p, offset=0):
            return helpers.scale(p.x + p.y) + offset

        def make_closure(k):
            def inner(v):
                return helpers.scale(v) + k
            return inner
    """))
    # a virtualenv and a .git inside the project must never be shipped
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / ".git").mkdir()
    monkeypatch.syspath_prepend(str(root))
    for name in ["proj", "proj.helpers", "proj.jobs"]:
        sys.modules.pop(name, None)
    yield root
    for name in ["proj", "proj.helpers", "proj.jobs"]:
        sys.modules.pop(name, None)


def _unpack(data: bytes) -> tuple[dict, zipfile.ZipFile]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return json.loads(zf.read(pk.MANIFEST)), zf


def _load_call_elsewhere(data: bytes, monkeypatch, project_root: Path):
    """Unpickle call.pkl as the container would: the project's modules NOT importable from the project."""
    _, zf = _unpack(data)
    raw = zf.read(pk.CALL)
    for name in ["proj", "proj.helpers", "proj.jobs"]:
        sys.modules.pop(name, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project_root)])
    return cloudpickle.loads(raw)


def test_round_trip_simple():
    data = pk.build_package(lambda a, b: a + b, (2, 2))
    manifest, zf = _unpack(data)
    assert manifest["format"] == 1
    assert manifest["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert manifest["cloudpickle"] == pk.cloudpickle_version()
    assert manifest["function"].endswith("<lambda>")
    assert set(zf.namelist()) >= {pk.MANIFEST, pk.CALL, pk.REQUIREMENTS}
    func, args, kwargs = cloudpickle.loads(zf.read(pk.CALL))
    assert func(*args, **kwargs) == 4
    # the defining module (this test file, under the default project root = its directory) is shipped too
    assert manifest["modules"] == ["src/test_packaging.py"]
    info = pk.validate_package(data)
    assert info.function == manifest["function"] and info.members == 4


def test_local_module_helper_dataclass_and_closure(project, monkeypatch):
    jobs = importlib.import_module("proj.jobs")
    helpers = importlib.import_module("proj.helpers")
    data = pk.build_package(jobs.job, (helpers.Point(1, 2),), {"offset": 5}, requirements=["six>=1.0"],
                            env={"MY_SETTING": "x"})
    manifest, zf = _unpack(data)
    assert manifest["modules"] == ["src/proj/__init__.py", "src/proj/helpers.py", "src/proj/jobs.py"]
    assert manifest["function"] == "proj.jobs.job"
    assert manifest["requirements"] == ["six>=1.0"]
    assert manifest["env"] == {"MY_SETTING": "x"}
    assert zf.read(pk.REQUIREMENTS) == b"six>=1.0\n"
    assert zf.read("src/proj/helpers.py") == (project / "proj" / "helpers.py").read_bytes()
    assert not [n for n in zf.namelist() if ".venv" in n or ".git" in n or "__pycache__" in n]
    assert cloudpickle.list_registry_pickle_by_value() == set()  # registrations undone

    closure = jobs.make_closure(7)
    data2 = pk.build_package(closure, (3,))
    func, args, kwargs = _load_call_elsewhere(data2, monkeypatch, project)
    assert func(*args, **kwargs) == 37

    func, args, kwargs = _load_call_elsewhere(data, monkeypatch, project)
    assert "proj" not in sys.modules  # by value: nothing imported
    assert func(*args, **kwargs) == 35
    assert args[0].x == 1 and type(args[0]).__name__ == "Point"


def test_project_root_excludes_venv_and_big_files(project, monkeypatch):
    venv_mod = project / ".venv" / "lib" / "vendored.py"
    venv_mod.write_text("def f():\n    return 1\n")
    big = project / "proj" / "bigdata.py"
    big.write_text("X = '" + "a" * (pk.MAX_SOURCE_FILE_BYTES + 10) + "'\n")
    monkeypatch.syspath_prepend(str(venv_mod.parent))
    sys.modules.pop("vendored", None)
    sys.modules.pop("proj.bigdata", None)
    vendored = importlib.import_module("vendored")
    bigdata = importlib.import_module("proj.bigdata")

    def job():
        return vendored.f() + len(bigdata.X)

    data = pk.build_package(job, project_root=project)
    manifest, zf = _unpack(data)
    assert "src/vendored.py" not in zf.namelist()
    assert "src/proj/bigdata.py" not in zf.namelist()
    assert any("bigdata.py" in s for s in manifest["skipped"])
    sys.modules.pop("vendored", None)
    sys.modules.pop("proj.bigdata", None)


def test_too_large_names_biggest_files():
    import os

    payload = os.urandom(3 * pk.MiB)  # incompressible
    with pytest.raises(PackageTooLarge) as ei:
        pk.build_package(len, (payload,), max_bytes=2 * pk.MiB)
    msg = str(ei.value)
    assert "call.pkl" in msg and "over the limit" in msg and "by reference" in msg
    assert isinstance(ei.value, InvalidRequest)


@pytest.mark.parametrize("reqs, needle", [
    (["--index-url=http://evil"], "pip option"),
    (["-r /etc/passwd"], "pip option"),
    (["a\nb"], "line break"),
    ([""], "empty requirement"),  # refused, as by the supervisor (it was skipped here)
    (["numpy", "  "], "empty requirement"),
    (["./local/pkg"], "URL or a path"),  # the supervisor's PEP 508 rule, applied before sending
    (["numpy>="], "not a valid requirement"),
    ("numpy", "give a list of requirements"),
])
def test_bad_requirements(reqs, needle):
    with pytest.raises(InvalidRequest, match=needle):
        pk.build_package(len, ("x",), requirements=reqs)


def test_bad_env():
    with pytest.raises(InvalidRequest, match="reserved"):
        pk.build_package(len, ("x",), env={"CUMULUS_PARTITION_ID": "x"})
    with pytest.raises(InvalidRequest, match="reserved"):
        pk.build_package(len, ("x",), env={"cumulus_partition_id": "x"})  # in any case, as the supervisor
    with pytest.raises(InvalidRequest, match="valid variable name"):
        pk.build_package(len, ("x",), env={"A-B": "x"})
    with pytest.raises(InvalidRequest, match="valid variable name"):
        pk.build_package(len, ("x",), env={"A\n": "x"})  # the whole name is checked


# ------------------------------------------------------------------------------------------ validate_package


def _zip(entries: list[tuple], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for entry in entries:
            name, data = entry[0], entry[1]
            info = zipfile.ZipInfo(name)
            info.compress_type = entry[3] if len(entry) > 3 else method
            info.external_attr = (entry[2] if len(entry) > 2 else (stat.S_IFREG | 0o644)) << 16
            zf.writestr(info, data)
    return buf.getvalue()


GOOD_MANIFEST = json.dumps({"format": 1, "python": "3.11", "cloudpickle": "3.1.3", "function": "m.f",
                            "requirements": [], "modules": []}).encode()
BASE = [(pk.MANIFEST, GOOD_MANIFEST), (pk.CALL, b"not unpickled by the supervisor")]


def test_validate_accepts_minimal_and_never_unpickles():
    info = pk.validate_package(_zip(BASE))
    assert info.function == "m.f" and info.requirements == [] and len(info.sha256) == 64


@pytest.mark.parametrize("data, needle", [
    (b"this is not a zip at all", "not a valid zip archive"),
    (b"", "empty"),
    (_zip([("/etc/passwd", b"x")] + BASE), "absolute path"),
    (_zip([("src/../../evil.py", b"x")] + BASE), "'..'"),
    (_zip([("src\\..\\evil.py", b"x")] + BASE), "backslash"),
    (_zip([("src/link.py", b"/etc/passwd", stat.S_IFLNK | 0o777)] + BASE), "symbolic link"),
    (_zip([("src/fifo", b"", stat.S_IFIFO | 0o644)] + BASE), "not a regular file"),
    (_zip([(pk.CALL, b"x")]), "no cumulus-job.json"),
    (_zip([(pk.MANIFEST, GOOD_MANIFEST)]), "no call.pkl"),
    (_zip([(pk.MANIFEST, b"{not json"), (pk.CALL, b"x")]), "not valid JSON"),
    (_zip([(pk.MANIFEST, b"[1, 2]"), (pk.CALL, b"x")]), "JSON object"),
    (_zip([(pk.MANIFEST, GOOD_MANIFEST.replace(b'"format": 1', b'"format": 9')), (pk.CALL, b"x")]),
     "unsupported format 9"),
    (_zip([(pk.MANIFEST, GOOD_MANIFEST.replace(b'"requirements": []', b'"requirements": ["--pre"]')),
           (pk.CALL, b"x")]), "pip option"),
    (_zip([(pk.MANIFEST, GOOD_MANIFEST.replace(b'"modules": []', b'"modules": ["src/x.py"]')),
           (pk.CALL, b"x")]), "not in the archive"),
    (_zip([(pk.MANIFEST, GOOD_MANIFEST.replace(b'"requirements": []', b'"requirements": ["numpy", ""]')),
           (pk.CALL, b"x")]), "empty requirement"),
    (_zip([(pk.MANIFEST, GOOD_MANIFEST.replace(b'"modules": []', b'"modules": [], "env": {"cumulus_x": "1"}')),
           (pk.CALL, b"x")]), "reserved"),
    (_zip([(pk.CALL, b"x"), ("src/x.py", b"x", stat.S_IFREG | 0o644, zipfile.ZIP_BZIP2)] + BASE[:1]),
     "compression method"),
])
def test_validate_rejects(data, needle):
    with pytest.raises(InvalidRequest) as ei:
        pk.validate_package(data)
    assert needle in str(ei.value), str(ei.value)


def test_validate_rejects_too_big():
    data = _zip(BASE + [("src/blob", bytes(2 * pk.MiB))], method=zipfile.ZIP_STORED)
    with pytest.raises(PackageTooLarge, match="over the limit"):
        pk.validate_package(data, max_bytes=pk.MiB)


def test_validate_rejects_zip_bomb():
    # 64 MiB of zeros deflates to ~64 KiB: inflates far beyond 8x the 1 MiB limit
    bomb = _zip(BASE + [("src/bomb.txt", bytes(64 * pk.MiB))])
    assert len(bomb) < pk.MiB
    with pytest.raises(PackageTooLarge, match="zip bomb"):
        pk.validate_package(bomb, max_bytes=pk.MiB)
    # many moderately compressible members: the total counts
    import random

    chunk = bytes(random.Random(0).choices(b"a" * 40 + b"bc", k=pk.MiB))
    many = _zip(BASE + [(f"src/f{i}.txt", chunk) for i in range(10)])
    assert len(many) < pk.MiB
    with pytest.raises(PackageTooLarge, match="zip bomb"):
        pk.validate_package(many, max_bytes=pk.MiB)
    # a highly compressible but legitimate package (zeros array) within the total is fine
    pk.validate_package(_zip(BASE + [("src/zeros.bin", bytes(4 * pk.MiB))]), max_bytes=pk.MiB)


def test_validate_rejects_duplicates():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(pk.MANIFEST, GOOD_MANIFEST)
        zf.writestr(pk.CALL, b"x")
        with pytest.warns(UserWarning):
            zf.writestr(pk.CALL, b"y")
    with pytest.raises(InvalidRequest, match="twice"):
        pk.validate_package(buf.getvalue())


# ------------------------------------------------------------------------------------------ results


def test_decode_success():
    env = pk.encode_result(True, value=cloudpickle.dumps({"a": [1, 2]}), duration_s=0.5)
    out = pk.decode_result(env)
    assert out.ok and out.value == {"a": [1, 2]} and out.result() == {"a": [1, 2]} and out.duration_s == 0.5


def _failed(exc: BaseException, pickle_it=True) -> pk.Outcome:
    try:
        raise exc
    except BaseException as e:  # noqa: BLE001
        tb = "".join(traceback.format_exception(e))
    return pk.decode_result(pk.encode_result(
        False, exc_type=f"{type(exc).__module__}.{type(exc).__qualname__}", exc_message=str(exc), traceback=tb,
        exc_pickle=cloudpickle.dumps(exc) if pickle_it else None))


def test_raise_remote_original_type_with_traceback():
    out = _failed(ValueError("bad value 42"))
    assert not out.ok and out.exc_type == "builtins.ValueError"
    with pytest.raises(ValueError, match="bad value 42") as ei:
        out.result()
    cause = ei.value.__cause__
    assert isinstance(cause, pk.RemoteTraceback) and "ValueError: bad value 42" in str(cause)


def test_raise_remote_unknown_type_is_remote_error():
    env = msgpack.packb({"format": 1, "ok": False, "exc_type": "somelib.CustomError", "exc_message": "boom",
                         "traceback": "Traceback ...\nsomelib.CustomError: boom\n", "exc_pickle": b"garbage"})
    out = pk.decode_result(env)
    with pytest.raises(RemoteError) as ei:
        pk.raise_remote(out)
    assert ei.value.type_name == "somelib.CustomError" and "boom" in str(ei.value)
    assert "Traceback" in ei.value.remote_traceback
    assert isinstance(ei.value.__cause__, pk.RemoteTraceback)


def test_decode_garbage():
    with pytest.raises(RemoteError, match="not valid msgpack"):
        pk.decode_result(b"\xc1\xc1")
    with pytest.raises(RemoteError, match="unknown shape"):
        pk.decode_result(msgpack.packb({"format": 2, "ok": True}))
