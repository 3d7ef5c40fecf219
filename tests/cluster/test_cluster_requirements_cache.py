"""Requirements installed by the supervisor's trusted step on the real local cluster: a ``network="none"`` job
imports its package from the node's cache (mounted read-only at /cumulus/deps), a second job with the same list
reuses the entry (no second install service), a failing install fails the job with
``cumulus.RequirementsInstallFailed``, and credentials in a requirement URL appear in no log line.

The local cluster has no internet: the packages come from the worker wheelhouse
(``/var/lib/cumulus/wheelhouse`` with ``.no-index``; the local cluster's nodes share the host's filesystem).
Each run uses a package name of its own, so an entry left by an earlier run is never taken for this run's install.
"""

from __future__ import annotations

import io
import secrets
import shutil
import zipfile
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import pytest
import trio

from cumulus.app import open_supervisor
from cumulus.client.packaging import build_package, decode_result
from cumulus.config import load_settings
from cumulus.jobs import JobRecord, JobSpec, JobState
from cumulus.resources.requirements_cache import DEFAULT_WHEELHOUSE, cache_key, cache_root
from cumulus.resources.requirements_install import LABEL_KEY, ROLE_INSTALL

from helpers import assert_nothing_left, wait_workers_healthy

SID = f"trq-{secrets.token_hex(4)}"
JOB_TIMEOUT = 120
NAME = f"cumulus_rqc_{secrets.token_hex(4)}"  # this run's own package
REQUIREMENT = f"{NAME.replace('_', '-')}==1.0"


def _wheel(name: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel of ``name`` 1.0 (VALUE = 42)."""
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, t in files.items():
            zf.writestr(n, t)
    return f"{name}-1.0-py3-none-any.whl", buf.getvalue()


def imports_the_package(name: str):
    """The job: its package's value, where it came from, and whether the cache is writable from inside."""
    import errno
    import importlib
    import os

    module = importlib.import_module(name)
    try:
        with open("/cumulus/deps/written-by-the-job", "w"):
            pass
        read_only = False
    except OSError as exc:
        read_only = exc.errno in (errno.EROFS, errno.EACCES)
    return module.VALUE, os.path.dirname(os.path.dirname(module.__file__)), read_only


@pytest.fixture
def wheelhouse(cluster):
    """This run's wheel in the workers' wheelhouse (made, offline-only, if there is none; removed after)."""
    house = Path(DEFAULT_WHEELHOUSE)
    made = not house.exists()
    house.mkdir(parents=True, exist_ok=True)
    if made:
        (house / ".no-index").touch()
    filename, blob = _wheel(NAME)
    (house / filename).write_bytes(blob)
    yield house
    (house / filename).unlink(missing_ok=True)
    if made:
        shutil.rmtree(house, ignore_errors=True)


@asynccontextmanager
async def supervisor(worker_count: int):
    settings = load_settings(environ={}, overrides={
        "supervisor_id": SID, "cluster.allow_non_gpu_devices": True, "cluster.poll_interval": 0.1})
    async with open_supervisor(settings, serve_rpc=False) as api:
        await wait_workers_healthy(api, worker_count)
        yield api, settings


async def finish(record: JobRecord) -> list[str]:
    """Wait for the job's teardown; return its log lines."""
    lines: list[str] = []
    with trio.fail_after(JOB_TIMEOUT):
        async with aclosing(record.events(replay_logs=True)) as events:
            async for event in events:
                if event.log is not None:
                    lines.append(event.log[1])
        await record.torn_down.wait()
    return lines


def spec(requirements: list[str]) -> JobSpec:
    return JobSpec(package=build_package(imports_the_package, (NAME,), requirements=requirements), gpu=1.0,
                   duration=120, requirements=tuple(requirements), network="none")


async def test_a_network_none_job_gets_its_requirements_from_the_node_cache(cluster, workers, wheelhouse,
                                                                            docker_manager):
    async with supervisor(len(workers)) as (sup, settings):
        first = await sup.submit(spec([REQUIREMENT]))
        first_log = await finish(first)
        assert first.state is JobState.COMPLETED, (first.reason, first_log)
        value, location, read_only = decode_result(first.result).value
        assert value == 42 and location == "/cumulus/deps" and read_only, (location, first_log)
        assert any(line.startswith(f"[cumulus] installing 1 requirement(s) on this node: {REQUIREMENT}")
                   for line in first_log), first_log
        assert any(line.startswith("[pip] ") and "Successfully installed" in line for line in first_log), first_log
        assert "[cumulus] requirements: installed by the supervisor, at /cumulus/deps (read-only)" in first_log

        # Same list, same node (gpu=1.0 on the node that has the entry, or the other: then it installs there,
        # once): run jobs until one lands on the first job's node, and check that it did not install.
        key = cache_key([REQUIREMENT], settings.cluster.image)
        entry = Path(cache_root(settings.cluster.jobs_dir)) / key
        assert (entry / "site" / NAME / "__init__.py").is_file() and (entry / "log" / "install.log").is_file()
        for _ in range(4):
            again = await sup.submit(spec([REQUIREMENT]))
            again_log = await finish(again)
            assert again.state is JobState.COMPLETED, (again.reason, again_log)
            if again.placement.worker == first.placement.worker:
                break
        else:
            pytest.fail("no second job landed on the first job's worker")
        assert decode_result(again.result).value == (42, "/cumulus/deps", True)
        assert not [line for line in again_log if line.startswith(("[pip]", "[cumulus] installing"))], again_log
        assert any("installed already on this node" in line for line in again_log), again_log
        assert not docker_manager.services.list(filters={"label": [f"{LABEL_KEY}={key}"]})
        assert not (entry / "site" / "written-by-the-job").exists()
        await assert_nothing_left(sup, SID, [first.job_id, again.job_id],
                                  expect={first.job_id: JobState.COMPLETED, again.job_id: JobState.COMPLETED})
    shutil.rmtree(entry, ignore_errors=True)


async def test_a_failing_install_fails_the_job_and_hides_url_credentials(cluster, workers, wheelhouse,
                                                                         docker_manager):
    secret_url = f"https://alice:s3cret-{secrets.token_hex(3)}@127.0.0.1:9/no-such-{NAME}-1.0.whl"
    requirement = f"no-such-{NAME.replace('_', '-')} @ {secret_url}"
    async with supervisor(len(workers)) as (sup, settings):
        job = await sup.submit(spec([requirement]))
        log = await finish(job)
        assert job.state is JobState.FAILED, (job.state, job.reason)
        assert job.reason.startswith("container_failed: requirements: pip install of"), job.reason
        failure = decode_result(job.result)
        assert failure.exc_type == "cumulus.RequirementsInstallFailed", failure
        _, history = await sup.describe(job.job_id)
        texts = [job.reason, failure.exc_message, failure.traceback, *log,
                 *(e.text + e.reason + str(e.data) for e in history)]
        assert not [t for t in texts if "s3cret" in t or "alice" in t], texts
        assert any("https://***@127.0.0.1:9/" in t for t in texts), texts
        assert not docker_manager.services.list(filters={"label": [f"cumulus.role={ROLE_INSTALL}",
                                                                   f"cumulus.supervisor_id={SID}"]})
        key = cache_key([requirement], settings.cluster.image)
        root = Path(cache_root(settings.cluster.jobs_dir))
        assert not (root / key).exists() and not list(root.glob(f".tmp-{key[:16]}-*"))
        await assert_nothing_left(sup, SID, [job.job_id], expect={job.job_id: JobState.FAILED})
