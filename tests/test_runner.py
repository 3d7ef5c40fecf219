"""The job runner (worker_image/image/runner.py) run locally as a subprocess, with env overrides for its dirs."""

from __future__ import annotations

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
from cumulus.checkpoint import CHECKPOINT_LINE
from cumulus.client import packaging as pk
from cumulus.errors import RemoteError

RUNNER = Path(__file__).resolve().parents[1] / "worker_image" / "image" / "runner.py"


def run_runner(tmp_path: Path, package: bytes, env: dict | None = None, timeout: float = 120):
    code, out = tmp_path / "code", tmp_path / "out"
    code.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    (code / "package.zip").write_bytes(package)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    full_env.update({"CUMULUS_CODE_DIR": str(code), "CUMULUS_OUTPUT_DIR": str(out),
                     "CUMULUS_PIP_CACHE": str(tmp_path / "no-cache"), **(env or {})})
    proc = subprocess.run([sys.executable, str(RUNNER)], env=full_env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path))
    result = out / "result.msgpack"
    outcome = pk.decode_result(result.read_bytes()) if result.exists() else None
    assert not [p for p in out.iterdir() if p.name != "result.msgpack"], "temporary files left behind"
    return proc, outcome


def add(a, b):
    print("adding", a, b)
    return a + b


def fails(x):
    raise ValueError(f"bad value {x}")


def unpicklable():
    import threading

    return threading.Lock()


def test_success(tmp_path):
    proc, outcome = run_runner(tmp_path, pk.build_package(add, (2, 2)))
    assert proc.returncode == 0, proc.stderr
    assert outcome.ok and outcome.value == 4 and outcome.duration_s > 0
    assert "adding 2 2" in proc.stdout
    assert "[cumulus] job finished in" in proc.stderr.strip().splitlines()[-1]


def test_user_exception(tmp_path):
    proc, outcome = run_runner(tmp_path, pk.build_package(fails, (42,)))
    assert proc.returncode == 1
    assert not outcome.ok and outcome.exc_type == "builtins.ValueError"
    assert outcome.exc_message == "bad value 42"
    assert "in fails" in outcome.traceback and "ValueError: bad value 42" in outcome.traceback
    assert "ValueError: bad value 42" in proc.stderr  # also in the job's log
    with pytest.raises(ValueError, match="bad value 42") as ei:
        pk.raise_remote(outcome)
    assert isinstance(ei.value.__cause__, pk.RemoteTraceback)
    assert "in fails" in str(ei.value.__cause__)


def test_unpicklable_result(tmp_path):
    proc, outcome = run_runner(tmp_path, pk.build_package(unpicklable))
    assert proc.returncode == 1
    assert outcome.exc_type == "cumulus.UnpicklableResult"
    assert "_thread.lock" in outcome.exc_message and "cannot be pickled" in outcome.exc_message
    with pytest.raises(RemoteError, match="UnpicklableResult"):
        outcome.result()


def test_local_module_shipped_as_source(tmp_path, monkeypatch):
    """A helper module imported lazily inside the job (not reachable by pickling) comes from src/."""
    root = tmp_path / "proj"
    (root / "mylib").mkdir(parents=True)
    (root / "mylib" / "__init__.py").write_text("")
    (root / "mylib" / "util.py").write_text("def triple(x):\n    return 3 * x\n")
    (root / "jobmod.py").write_text(textwrap.dedent("""
        import mylib.util

        def job(x):
            import importlib
            return importlib.import_module("mylib.util").triple(x) + 1
    """))
    monkeypatch.syspath_prepend(str(root))
    for m in ("jobmod", "mylib", "mylib.util"):
        sys.modules.pop(m, None)
    import jobmod

    try:
        data = pk.build_package(jobmod.job, (5,), env={"JOB_FLAG": "1"})
    finally:
        for m in ("jobmod", "mylib", "mylib.util"):
            sys.modules.pop(m, None)
    assert "src/mylib/util.py" in json.loads(zipfile.ZipFile(io.BytesIO(data)).read(pk.MANIFEST))["modules"]
    proc, outcome = run_runner(tmp_path, data)
    assert proc.returncode == 0, proc.stderr
    assert outcome.value == 16


def test_env_and_partition_vars(tmp_path):
    def job():
        return {k: os.environ.get(k) for k in ("JOB_FLAG", "CUMULUS_PARTITION_ID", "CUMULUS_GPU_FRACTION")}

    proc, outcome = run_runner(tmp_path, pk.build_package(job, env={"JOB_FLAG": "yes"}),
                               env={"CUMULUS_PARTITION_ID": "partition_x", "CUMULUS_GPU_FRACTION": "0.25",
                                    "CUMULUS_DEVICE_INDEX": "0"})
    assert proc.returncode == 0, proc.stderr
    assert outcome.value == {"JOB_FLAG": "yes", "CUMULUS_PARTITION_ID": "partition_x",
                             "CUMULUS_GPU_FRACTION": "0.25"}
    assert "partition partition_x device 0 fraction 0.25" in proc.stderr


def test_reserved_env_names_in_the_manifest_are_not_applied_in_any_case(tmp_path):
    """A package built by hand (the SDK and the supervisor refuse it) cannot set Cumulus's own variables."""
    def job():
        return {k: v for k, v in os.environ.items() if k.upper().startswith(("CUMULUS_", "JOB_"))}

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(pk.MANIFEST, json.dumps({"format": 1, "python": "3.11", "cloudpickle": "3", "function": "m.f",
                                             "env": {"cumulus_partition_id": "forged", "JOB_FLAG": "1"}}))
        zf.writestr(pk.CALL, cloudpickle.dumps((job, (), {})))
    proc, outcome = run_runner(tmp_path, buf.getvalue(), env={"CUMULUS_PARTITION_ID": "real"})
    assert proc.returncode == 0, proc.stderr
    assert {k: v for k, v in outcome.value.items() if k.upper() in ("CUMULUS_PARTITION_ID", "JOB_FLAG")} == {
        "CUMULUS_PARTITION_ID": "real", "JOB_FLAG": "1"}


def _evil_zip(name: str, method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(pk.MANIFEST, json.dumps({"format": 1}))
        zf.writestr(pk.CALL, b"x")
        zf.writestr(name, b"pwned", compress_type=method)
    return buf.getvalue()


@pytest.mark.parametrize("data, needle", [
    (b"not a zip", "not a valid zip"),
    (_evil_zip("../escape.txt"), "'..'"),
    (_evil_zip("/tmp/abs.txt"), "absolute path"),
    (_evil_zip("src/x.py", zipfile.ZIP_BZIP2), "compression method"),  # refused as validate_package does
])
def test_bad_package_is_infra_failure(tmp_path, data, needle):
    proc, outcome = run_runner(tmp_path, data)
    assert proc.returncode == 2, proc.stderr
    assert outcome.exc_type == "cumulus.InvalidPackage" and needle in outcome.exc_message
    assert not (tmp_path / "escape.txt").exists()


def _wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel, cumulus-testpkg 0.1 (VALUE = 42)."""
    path = dest / "cumulus_testpkg-0.1-py3-none-any.whl"
    files = {
        "cumulus_testpkg/__init__.py": "VALUE = 42\n",
        "cumulus_testpkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: cumulus-testpkg\nVersion: 0.1\n",
        "cumulus_testpkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + "cumulus_testpkg-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, t in files.items():
            zf.writestr(n, t)
        zf.writestr("cumulus_testpkg-0.1.dist-info/RECORD", record)
    return path


def uses_testpkg():
    import cumulus_testpkg

    return cumulus_testpkg.VALUE


@pytest.mark.slow
def test_requirements_from_wheelhouse(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    _wheel(house)
    cache = tmp_path / "pip-cache"
    cache.mkdir()
    proc, outcome = run_runner(tmp_path, pk.build_package(uses_testpkg, requirements=["cumulus-testpkg==0.1"]),
                               env={"CUMULUS_WHEELHOUSE": str(house), "CUMULUS_PIP_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert outcome.value == 42
    assert "requirements installed" in proc.stderr


@pytest.mark.slow
def test_requirements_failure_is_clear(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    proc, outcome = run_runner(tmp_path, pk.build_package(add, (1, 2), requirements=["no-such-package-xyz==9"]),
                               env={"CUMULUS_WHEELHOUSE": str(house)})
    assert proc.returncode == 2, proc.stderr
    assert outcome.exc_type == "cumulus.RequirementsInstallFailed"
    assert "no-such-package-xyz" in outcome.exc_message and "ERROR" in outcome.exc_message


# ---- checkpoints and pause (the in-job API from /opt/cumulus/jobapi, runner_checkpoint.py) ---------------------


def pausing_job(steps):
    """Checks for a pause each step; on one, saves and returns (the runner then reports the job paused)."""
    for step in range(steps):
        if cumulus.should_pause():  # the module global: pickled by reference, found in the job's jobapi
            cumulus.checkpoint.save({"next": step}, step=step)
            return f"paused at {step}"
    return "done"


def checkpoint_env(tmp_path, pause: bool = False) -> dict:
    """The env the supervisor sets (the checkpoint dir outside the output dir: run_runner wants only the result)."""
    lease = tmp_path / "lease"
    lease.mkdir(exist_ok=True)
    if pause:
        (lease / "pause").touch()
    return {"CUMULUS_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), "CUMULUS_PAUSE_FILE": str(lease / "pause"),
            "CUMULUS_CHECKPOINT_RESTORE": str(tmp_path / "code" / "checkpoint.bin")}


def test_a_job_that_acknowledges_a_pause_is_paused(tmp_path):
    proc, outcome = run_runner(tmp_path, pk.build_package(pausing_job, (5,)), env=checkpoint_env(tmp_path, pause=True))
    assert proc.returncode == 3, proc.stderr
    assert outcome is None and not (tmp_path / "out" / "result.msgpack").exists()  # no envelope
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("[cumulus] job paused in ") and lines[-1].endswith(" s")
    assert any(CHECKPOINT_LINE.match(line) for line in lines)
    assert os.listdir(tmp_path / "checkpoints") == ["ckpt-00000001-0.bin"]
    assert "[cumulus] end of stdout" in proc.stdout


def test_the_same_job_without_a_pause_request_finishes(tmp_path):
    proc, outcome = run_runner(tmp_path, pk.build_package(pausing_job, (5,)), env=checkpoint_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert outcome.ok and outcome.value == "done"
    assert "[cumulus] job finished in" in proc.stderr.strip().splitlines()[-1]


def test_a_pause_request_the_job_never_answers_does_not_pause_it(tmp_path):
    proc, outcome = run_runner(tmp_path, pk.build_package(add, (1, 2)), env=checkpoint_env(tmp_path, pause=True))
    assert proc.returncode == 0, proc.stderr
    assert outcome.value == 3


def test_a_job_that_fails_after_acknowledging_a_pause_has_failed(tmp_path):
    def job():
        assert cumulus.should_pause()
        raise RuntimeError("broke while pausing")

    proc, outcome = run_runner(tmp_path, pk.build_package(job), env=checkpoint_env(tmp_path, pause=True))
    assert proc.returncode == 1, proc.stderr
    assert outcome.exc_type == "builtins.RuntimeError" and outcome.exc_message == "broke while pausing"
    assert "[cumulus] job failed in" in proc.stderr.strip().splitlines()[-1]


def test_the_job_uses_the_runners_in_job_api(tmp_path):
    def job():
        import cumulus as api  # imported in the job: the runner's jobapi copy, not an SDK

        saved = [api.checkpoint.save({"i": i}) for i in range(3)]
        return saved, api.checkpoint.load(), api.checkpoint.latest_step(), api.checkpoint.__file__, \
            hasattr(api, "remote")

    proc, outcome = run_runner(tmp_path, pk.build_package(job), env=checkpoint_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    saved, loaded, step, api_file, has_sdk = outcome.value
    assert saved == [0, 1, 2] and loaded == {"i": 2} and step == 2
    assert api_file.endswith(os.path.join("worker_image", "image", "jobapi", "cumulus", "checkpoint.py"))
    assert not has_sdk
    assert [m.group(1) for m in map(CHECKPOINT_LINE.match, proc.stderr.splitlines()) if m] == [
        "ckpt-00000001-0.bin", "ckpt-00000002-1.bin", "ckpt-00000003-2.bin"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ckpt-00000002-1.bin", "ckpt-00000003-2.bin"]


def test_a_resumed_job_loads_its_restore_file(tmp_path):
    def job():
        restored, step = cumulus.checkpoint.load(), cumulus.checkpoint.latest_step()
        new_step = cumulus.checkpoint.save({"next": restored["next"] + 1})
        return restored, step, new_step, cumulus.checkpoint.load()

    env = checkpoint_env(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "checkpoint.bin").write_bytes(cloudpickle.dumps({"next": 7}, protocol=5))
    proc, outcome = run_runner(tmp_path, pk.build_package(job), env={**env, "CUMULUS_CHECKPOINT_RESTORE_STEP": "7"})
    assert proc.returncode == 0, proc.stderr
    assert outcome.value == ({"next": 7}, 7, 8, {"next": 8})
