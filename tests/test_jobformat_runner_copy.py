"""The runner's copy of the job format agrees with cumulus.jobformat.

The runner (worker_image/image/runner.py with runner_package.py beside it) runs inside the worker image and
imports nothing from ``cumulus``, so runner_package.py keeps its own copy of the member-name rule, the reserved
env prefix and the limits. This file imports both (the runner's files by path) and checks that the copies agree:
equal constants, and the same answer (same words) for the same member name or env name, including names generated
by hypothesis. The supervisor's own copies of the job directory's file names, of the runner's end-of-stdout
marker and of the result size limit (runner_instance.py's, for a class instance's replies) are tied here too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cumulus import jobformat
from cumulus.config import JobSettings

IMAGE = Path(__file__).resolve().parents[1] / "worker_image" / "image"
SIBLINGS = ("runner_package", "runner_checkpoint", "runner_warm", "runner_instance")  # what runner.py imports
# from its directory


def _load(name: str) -> ModuleType:
    """``IMAGE/<name>.py`` as a module (nothing run: main() is behind ``__name__ == "__main__"``), with the default
    limits (no CUMULUS_MAX_PACKAGE_BYTES) and the image directory on sys.path (runner.py imports its sibling)."""
    saved_env, saved_path = os.environ.pop("CUMULUS_MAX_PACKAGE_BYTES", None), list(sys.path)
    saved_modules = {m: sys.modules.pop(m, None) for m in SIBLINGS}
    sys.path.insert(0, str(IMAGE))
    try:
        spec = importlib.util.spec_from_file_location(f"cumulus_image_{name}_under_test", IMAGE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved_path
        for m, saved in saved_modules.items():
            sys.modules.pop(m, None)
            if saved is not None:
                sys.modules[m] = saved
        if saved_env is not None:
            os.environ["CUMULUS_MAX_PACKAGE_BYTES"] = saved_env


runner_copy = _load("runner_package")
runner_checkpoint = _load("runner_checkpoint")
runner_instance = _load("runner_instance")
runner = _load("runner")

SAME_CONSTANTS = ["FORMAT", "MANIFEST", "CALL", "PACKAGE_NAME", "RESULT_NAME", "MiB", "MAX_PACKAGE_MB",
                  "UNCOMPRESSED_FACTOR", "MAX_MEMBERS", "MAX_MANIFEST_BYTES", "RESERVED_ENV_PREFIX"]


@pytest.mark.parametrize("module", [runner, runner_copy, runner_checkpoint, runner_instance],
                         ids=["runner", "runner_package", "runner_checkpoint", "runner_instance"])
def test_the_runner_stays_standalone(module):
    source = Path(module.__file__).read_text()
    assert "import cumulus" not in source and "from cumulus" not in source
    assert not [m for m in vars(module).values() if isinstance(m, ModuleType) and m.__name__.startswith("cumulus")]


def test_the_runner_uses_its_copy():
    assert runner.extract.__module__ == runner.job_env.__module__ == runner.InfraFailure.__module__ == "runner_package"


def test_the_runner_has_the_in_job_api_and_its_pause_check():
    assert runner.JOBAPI_DIR == str(IMAGE / "jobapi") and (IMAGE / "jobapi" / "cumulus" / "checkpoint.py").is_file()
    assert runner.job_paused.__module__ == "runner_checkpoint" and runner.EXIT_PAUSED == 3
    assert str(IMAGE / "jobapi") not in sys.path  # _load restored the test's own path


@pytest.mark.parametrize("api, paused", [
    (None, False),
    (SimpleNamespace(), False),  # a module of that name that is not the API
    (SimpleNamespace(pause_acknowledged=lambda: False), False),
    (SimpleNamespace(pause_acknowledged=lambda: 1 / 0), False),  # never raises
    (SimpleNamespace(pause_acknowledged=lambda: True), True),
])
def test_job_paused_asks_the_in_job_api(monkeypatch, api, paused):
    monkeypatch.delitem(sys.modules, runner_checkpoint.IN_JOB_API, raising=False)
    if api is not None:
        monkeypatch.setitem(sys.modules, runner_checkpoint.IN_JOB_API, api)
    assert runner_checkpoint.job_paused() is paused


@pytest.mark.parametrize("name", SAME_CONSTANTS)
def test_constants_are_equal(name):
    assert getattr(runner_copy, name) == getattr(jobformat, name), name


def test_limits_derived_from_the_constants_are_equal():
    assert runner_copy.MAX_PACKAGE_BYTES == jobformat.MAX_PACKAGE_BYTES == 50 * 1024 * 1024
    assert runner_copy.MAX_UNCOMPRESSED == jobformat.UNCOMPRESSED_FACTOR * jobformat.MAX_PACKAGE_BYTES


def test_one_package_limit_everywhere():
    """The 50 MiB default is one constant: the supervisor's setting, the SDK's default and the runner's agree."""
    from cumulus.client import client, packaging

    assert JobSettings().max_package_mb == jobformat.MAX_PACKAGE_MB
    assert packaging.build_package.__kwdefaults__["max_bytes"] == jobformat.MAX_PACKAGE_BYTES
    assert jobformat.validate_package.__defaults__ == (jobformat.MAX_PACKAGE_BYTES,)
    saved = os.environ.pop("CUMULUS_JOBS_MAX_PACKAGE_MB", None)
    try:
        assert client.max_package_bytes() == jobformat.MAX_PACKAGE_BYTES
    finally:
        if saved is not None:
            os.environ["CUMULUS_JOBS_MAX_PACKAGE_MB"] = saved


def test_the_supervisors_copies_of_the_file_names_and_the_end_marker():
    from cumulus.actors.log_relay import STDOUT_END_MARKER
    from cumulus.resources import files

    assert (files.PACKAGE_NAME, files.RESULT_NAME) == (jobformat.PACKAGE_NAME, jobformat.RESULT_NAME)
    assert runner.STDOUT_END_MARKER == STDOUT_END_MARKER


def test_an_instances_replies_have_the_supervisors_result_limit():
    from cumulus.actors.result_fetch import MAX_RESULT_BYTES

    assert runner_instance.MAX_RESULT_BYTES == MAX_RESULT_BYTES
    assert runner.serve_instance.__module__ == "runner_instance"


# ---- the member-name rule -----------------------------------------------------------------------------------

SAMPLE_NAMES = [
    "cumulus-job.json", "call.pkl", "src/", "src/proj/__init__.py", "src/a b/c.py", "a:b", "ab:c", ":", "1:x",
    "src/x:y.py", "...", "a..b", ".hidden", "src/.hidden/x",
    "", "\0", "a\0b", "src\\evil.py", "\\x", "/etc/passwd", "/", "C:", "c:x", "Z:/x", "é:x", "ß:/x", "1:/x",
    "..", "../x", "src/../../x", "src/..", ".", "./x", "src/./x", "a//b", "//x", "src//",
]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_member_name_rule_agrees_on_samples(name):
    assert runner_copy.member_problem(name) == jobformat.check_member_name(name)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", "Z", "é", ".", "/", "\\", ":", "\0", " ", "_"]), max_size=12)
       | st.text(max_size=20))
@example("é:x")  # a non-ASCII "drive letter": once refused by the runner only
def test_member_name_rule_agrees_on_generated_names(name):
    assert runner_copy.member_problem(name) == jobformat.check_member_name(name)


# ---- the reserved env prefix ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.from_regex(jobformat.ENV_NAME_PATTERN, fullmatch=True)
       | st.sampled_from(["cumulus_x", "Cumulus_Code_Dir", "CUMULUS_", "cUmUlUs_y", "CUMULUSX", "MY_CUMULUS_X"]))
def test_the_runner_drops_exactly_the_reserved_env_names(name):
    applied = runner_copy.job_env({name: "v", "KEEP": "k"})
    assert (name in applied) == (not jobformat.is_reserved_env_name(name)), name
    assert applied["KEEP"] == "k"


def test_reserved_env_prefix_is_case_insensitive_in_the_runner():
    assert runner_copy.job_env({"cumulus_code_dir": "/", "CUMULUS_X": "1", "Ok": "1", 3: "x", "N": 4}) == {"Ok": "1"}
    assert runner_copy.job_env(["not", "a", "dict"]) == {}

