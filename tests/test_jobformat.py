"""One job format (cumulus.jobformat) for the SDK and the supervisor: the same request is refused by both, for the
same reason and with the same words; the supervisor never imports the SDK (cumulus.client)."""

from __future__ import annotations

import ast
import io
import json
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

@pytest.mark.parametrize("gpu", [0.0, -1.0, 1.5, 9.0, float("nan")])
def test_a_bad_gpu_share_is_refused_by_the_sdk_and_the_supervisor_alike(gpu):
    assert _sdk(lambda: normalize_options({"gpu": gpu})) == _server(gpu=gpu) != "accepted"


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
