"""One job format (cumulus.jobformat) for the SDK and the supervisor: the same request is refused by both, for the
same reason and with the same words; the supervisor never imports the SDK (cumulus.client)."""

from __future__ import annotations

import ast
import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import cloudpickle
import pytest

from cumulus import jobformat
from cumulus.client import packaging
from cumulus.client.options import normalize_options
from cumulus.config import Settings
from cumulus.errors import InvalidRequest, RemoteError
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.submission import spec_from_submission

ROOT = Path(__file__).resolve().parents[1]


def job(x):
    return x


GOOD = packaging.build_package(job, (1,))


def _package(manifest_changes: dict) -> bytes:
    """A package built by hand (the SDK refuses to build a bad one) with some manifest fields changed."""
    manifest = {"format": 1, "python": "3.11", "cloudpickle": "3.1.3", "function": "m.f", "requirements": [],
                "modules": [], "env": {}, **manifest_changes}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(jobformat.MANIFEST, json.dumps(manifest))
        zf.writestr(jobformat.CALL, cloudpickle.dumps((job, (1,), {})))
    return buf.getvalue()


def _server(**fields) -> str:
    """The supervisor's answer to a submission: its InvalidRequest message, or "accepted"."""
    request = pb.JobSubmission(**{"code_package": GOOD, "gpu": 0.5, "duration_seconds": 60, **fields})
    try:
        spec_from_submission(request, Settings())
    except InvalidRequest as error:
        return str(error)
    return "accepted"


def _sdk(call) -> str:
    try:
        call()
    except InvalidRequest as error:
        return str(error)
    return "accepted"


# ---- env: the CUMULUS_ prefix is reserved in any case, names are checked whole ---------------------------------

BAD_ENV_NAMES = ["CUMULUS_X", "cumulus_x", "Cumulus_Code_Dir", "1BAD", "A-B", "A\n", "", "é"]


@pytest.mark.parametrize("name", BAD_ENV_NAMES)
def test_a_bad_env_name_is_refused_by_the_sdk_and_the_supervisor_alike(name):
    env = {name: "1"}
    via_build = _sdk(lambda: packaging.build_package(job, (1,), env=env))
    via_options = _sdk(lambda: normalize_options({"env": env}))
    via_field = _server(env=env)
    via_manifest = _server(code_package=_package({"env": env}))
    assert via_build == via_options == via_field != "accepted"
    assert via_manifest == f"{jobformat.MANIFEST}: {via_field}"
    if name.upper().startswith("CUMULUS_"):
        assert "reserved" in via_field
    else:
        assert "not a valid variable name" in via_field


def test_good_env_passes_everywhere():
    env = {"MY_CUMULUS_SETTING": "x", "_A1": ""}
    data = packaging.build_package(job, (1,), env=env)
    assert _server(code_package=data, env=env) == "accepted"
    assert normalize_options({"env": env})["env"] == env


# Variables that programs of the job's container read before (or around) the job's code: loader, interpreter,
# installer, container runtime. Refused wherever a job's env comes from, saying why.
REFUSED_ENV = [
    ("LD_PRELOAD", "dynamic loader"), ("LD_LIBRARY_PATH", "dynamic loader"), ("GCONV_PATH", "dynamic loader"),
    ("PYTHONPATH", "Python interpreter"), ("PYTHONSTARTUP", "Python interpreter"), ("PYTHONHOME", "Python interpreter"),
    ("PYTHONIOENCODING", "Python interpreter"), ("PIP_INDEX_URL", "installer"), ("PIP_EXTRA_INDEX_URL", "installer"),
    ("UV_INDEX_URL", "installer"), ("NVIDIA_VISIBLE_DEVICES", "container runtime"), ("PATH", "which programs"),
]


@pytest.mark.parametrize("name, why", REFUSED_ENV, ids=[n for n, _ in REFUSED_ENV])
def test_loader_interpreter_and_installer_variables_are_refused_everywhere_saying_why(name, why):
    env = {name: "/tmp/evil"}
    via_build = _sdk(lambda: packaging.build_package(job, (1,), env=env))
    via_options = _sdk(lambda: normalize_options({"env": env}))
    via_field = _server(env=env)
    via_manifest = _server(code_package=_package({"env": env}))
    assert via_build == via_options == via_field != "accepted"
    assert via_manifest == f"{jobformat.MANIFEST}: {via_field}"
    assert f"{name!r}: not allowed in a job's env" in via_field and why in via_field, via_field


def test_harmless_python_variables_and_lookalike_names_pass():
    env = {"PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0", "MY_LD_FLAGS": "x", "PIPELINE": "x", "pip_cache": "x",
           "CUDA_VISIBLE_DEVICES": "0"}
    assert _server(env=env) == "accepted"
    assert jobformat.check_env(env) == env


def test_the_whole_env_is_capped_at_one_mib_names_and_values():
    fits = {f"V{i:03d}": "x" * (32 * 1024 - 5) for i in range(32)}  # 32 x (4 + 1 + 32763) bytes: 1 MiB exactly
    assert len(jobformat.check_env(fits)) == 32
    too_big = {**fits, "LAST": "x" * 200}
    message = _server(env=too_big)
    assert message == ("env is 1048781 bytes in all (names and values); at most 1048576 (1 MiB) are allowed: pass "
                       "big data in the call's arguments or download it in the job")
    assert _sdk(lambda: normalize_options({"env": too_big})) == message
    with pytest.raises(InvalidRequest, match="1048781 bytes in all"):
        jobformat.check_manifest({"format": 1, "python": "3.11", "cloudpickle": "3", "function": "m.f",
                                  "env": too_big})
    many = {f"V{i:03d}": "x" * (32 * 1024) for i in range(256)}  # the E2BIG case
    assert _server(env=many).startswith("env is 8389888 bytes in all")


# ---- requirements: one rule; an empty item is refused wherever it comes from ---------------------------------

BAD_REQUIREMENTS = [
    ("", "empty requirement"),
    ("   ", "empty requirement"),
    ("./my/local/pkg", "URL or a path"),
    ("https://example.org/x.whl", "URL or a path"),
    ("pkg @ file:///home/me/pkg", "file:"),
    ("numpy>=", "not a valid requirement"),
    ("-e .", "pip option"),
    ("numpy\nrequests", "line break"),
]


@pytest.mark.parametrize("req, words", BAD_REQUIREMENTS, ids=[r[1] + ":" + repr(r[0]) for r in BAD_REQUIREMENTS])
def test_a_bad_requirement_is_refused_by_the_sdk_and_the_supervisor_alike(req, words):
    via_build = _sdk(lambda: packaging.build_package(job, (1,), requirements=[req]))
    via_options = _sdk(lambda: normalize_options({"requirements": [req]}))
    via_field = _server(requirements=[req])
    via_manifest = _server(code_package=_package({"requirements": [req]}))
    assert via_build == via_options == via_field != "accepted"
    assert words in via_field
    assert via_manifest == f"{jobformat.MANIFEST}: {via_field}"


def test_requirements_are_stripped_the_same_way():
    data = packaging.build_package(job, (1,), requirements=["  numpy>=1.26 "])
    assert jobformat.validate_package(data).requirements == ["numpy>=1.26"]
    assert normalize_options({"requirements": " numpy>=1.26"})["requirements"] == ("numpy>=1.26",)
    assert _server(code_package=data, requirements=["numpy>=1.26  "]) == "accepted"


def test_a_string_is_not_a_list_of_requirements():
    with pytest.raises(InvalidRequest, match="give a list of requirements"):
        jobformat.check_requirements("numpy")  # type: ignore[arg-type]


# ---- gpu share ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gpu", [0.0, -1.0, 1.5, 9.0, float("nan"), 0.009, 1e-10, 5e-324])
def test_a_bad_gpu_share_is_refused_by_the_sdk_and_the_supervisor_alike(gpu):
    assert _sdk(lambda: normalize_options({"gpu": gpu})) == _server(gpu=gpu) != "accepted"


@pytest.mark.parametrize("gpu", [0.009, 1e-10, 5e-324])
def test_a_share_below_the_minimum_says_so(gpu):
    message = _server(gpu=gpu)
    assert f"gpu={gpu!r} is below the smallest share of a device, 0.01" in message and "0.25" in message


def test_the_smallest_share_is_accepted():
    assert jobformat.MIN_GPU_SHARE == 0.01
    assert _server(gpu=0.01) == "accepted" and normalize_options({"gpu": 0.01})["gpu"] == 0.01


# ---- the package's zip directory is checked before zipfile reads it -----------------------------------------

def zip_with_directory(entries: int, declared: int, *, zip64: bool = False) -> bytes:
    """A zip of ``entries`` one-byte-named central directory entries (all pointing at one local header) whose end
    record declares ``declared``: built by hand, in milliseconds, where zipfile would take minutes."""
    name = b"a"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    entry = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0,
                        0o100644 << 16, 0) + name
    directory = entry * entries
    data = local + directory
    if zip64:
        record = len(data)
        data += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, declared, declared, len(directory),
                            len(local))
        data += struct.pack("<4sLQL", b"PK\x06\x07", 0, record, 1)
        return data + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, declared, declared, len(directory), len(local), 0)


@pytest.fixture
def zipfile_never_parses(monkeypatch):
    """The cheap check must answer before zipfile parses a directory (that is what takes seconds)."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("zipfile parsed the directory")
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", refuse)


def test_a_zip_declaring_900k_entries_is_refused_from_its_end_record(zipfile_never_parses):
    data = zip_with_directory(900_000, 900_000, zip64=True)  # 42 MiB, under the 50 MiB package limit
    with pytest.raises(InvalidRequest, match="job package has 900000 entries; at most 10000 are allowed"):
        jobformat.validate_package(data)


def test_a_zip_whose_directory_holds_more_entries_than_it_declares_is_refused(zipfile_never_parses):
    with pytest.raises(InvalidRequest, match="does not hold the 5 entries its end record declares"):
        jobformat.validate_package(zip_with_directory(900_000, 5))
    with pytest.raises(InvalidRequest, match="does not hold the 9 entries its end record declares"):
        jobformat.validate_package(zip_with_directory(3, 9))


def test_the_directory_check_agrees_with_zipfile_on_real_packages():
    assert jobformat.check_zip_directory(GOOD) == len(zipfile.ZipFile(io.BytesIO(GOOD)).infolist())
    assert jobformat.check_zip_directory(zip_with_directory(3, 3)) == 3
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        zf.comment = b"a comment after the end record"
        for i in range(jobformat.MAX_MEMBERS):
            zf.writestr(f"src/m{i}.py", b"")
    assert jobformat.check_zip_directory(many.getvalue()) == jobformat.MAX_MEMBERS
    with pytest.raises(InvalidRequest, match="no end-of-central-directory record"):
        jobformat.check_zip_directory(b"PK\x03\x04 not a zip")


# ---- the result envelope ----------------------------------------------------------------------------------------

def test_envelope_round_trip_without_unpickling():
    value = cloudpickle.dumps({"a": 1})
    env = jobformat.decode_envelope(jobformat.encode_result(True, value=value, duration_s=0.5, host="w1"))
    assert env.ok and env.value == value and env.duration_s == 0.5 and env.extra == {"host": "w1"}
    failed = jobformat.decode_envelope(jobformat.encode_result(False, exc_type="builtins.ValueError",
                                                               exc_message="bad", traceback="tb"))
    assert (failed.ok, failed.exc_type, failed.exc_message, failed.traceback, failed.exc_pickle) == (
        False, "builtins.ValueError", "bad", "tb", None)
    with pytest.raises(RemoteError, match="not valid msgpack") as info:
        jobformat.decode_envelope(b"\xc1")
    assert info.value.type_name == jobformat.INVALID_RESULT


# ---- the supervisor never imports the SDK ----------------------------------------------------------------------

SERVER_SIDE = ["cumulus/jobformat", "cumulus/rpc", "cumulus/actors", "cumulus/resources", "cumulus/app.py",
               "cumulus/supervisor.py", "cumulus/jobs.py", "cumulus/config.py", "cumulus/errors.py"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_server_module_imports_cumulus_client():
    files = [p for entry in SERVER_SIDE for p in ((ROOT / entry).rglob("*.py") if (ROOT / entry).is_dir()
                                                   else [ROOT / entry])]
    assert len(files) > 10
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith("cumulus.client"))
                 for p in files}
    assert not {path: names for path, names in offenders.items() if names}


def test_importing_the_submission_checks_loads_no_sdk_module():
    script = ("import sys; import cumulus.rpc.convert, cumulus.rpc.submission, cumulus.jobformat; "
              "print(sorted(m for m in sys.modules if m.startswith('cumulus.client')))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
