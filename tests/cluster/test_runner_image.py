"""The worker image runs a job package as a one-off Swarm service and writes a decodable envelope."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import docker.types
import pytest

from cumulus.client import packaging as pk

JOBS_DIR = Path("/var/lib/cumulus/jobs")


def add(a, b):
    print("adding", a, b)
    return a + b


def fails():
    raise KeyError("missing")


def _run_service(docker_manager, cluster, node_id: str, package: bytes, timeout: float = 90.0,
                 wheels: dict[str, bytes] | None = None):
    job = f"test-runner-{uuid.uuid4().hex[:10]}"
    jobdir = JOBS_DIR / job
    code, out = jobdir / "code", jobdir / "output"
    code.mkdir(parents=True)
    out.mkdir()
    mounts = [docker.types.Mount("/cumulus/code", str(code), type="bind", read_only=True),
              docker.types.Mount("/cumulus/output", str(out), type="bind")]
    env = ["CUMULUS_PARTITION_ID=none", "CUMULUS_DEVICE_INDEX=0", "CUMULUS_GPU_FRACTION=1.0"]
    if wheels is not None:
        house = jobdir / "wheelhouse"
        house.mkdir()
        for name, blob in wheels.items():
            (house / name).write_bytes(blob)
        mounts.append(docker.types.Mount("/cumulus/wheelhouse", str(house), type="bind", read_only=True))
        env.append("CUMULUS_WHEELHOUSE=/cumulus/wheelhouse")
    (code / "package.zip").write_bytes(package)
    svc = None
    try:
        svc = docker_manager.services.create(
            image=cluster["image_id"],
            command=["python3", "/opt/cumulus/runner.py"],
            name=f"cumulus-{job}",
            constraints=[f"node.id=={node_id}"],
            networks=None,  # no network: Swarm has no attachable "none"; dockerd runs with --bridge=none
            init=True,
            env=env,
            mounts=mounts,
            restart_policy=docker.types.RestartPolicy(condition="none"),
            labels={"cumulus.test": "runner"},
        )
        deadline = time.monotonic() + timeout
        state, task = None, None
        while time.monotonic() < deadline:
            tasks = svc.tasks()
            if tasks:
                task = tasks[0]
                state = task["Status"]["State"]
                if state in ("complete", "failed", "rejected", "shutdown", "orphaned"):
                    break
            time.sleep(0.3)
        assert state in ("complete", "failed"), f"task did not finish: {state} {task and task['Status']}"
        logs = b"".join(svc.logs(stdout=True, stderr=True, timestamps=False)).decode(errors="replace")
        result = out / "result.msgpack"
        assert result.exists(), f"no envelope; task {task['Status']}; logs:\n{logs}"
        exit_code = task["Status"].get("ContainerStatus", {}).get("ExitCode")
        assert task["NodeID"] == node_id
        return exit_code, pk.decode_result(result.read_bytes()), logs
    finally:
        if svc is not None:
            try:
                svc.remove()
            except docker.errors.NotFound:
                pass
        shutil.rmtree(jobdir, ignore_errors=True)


def test_runner_in_image_on_each_worker(docker_manager, cluster, workers):
    data = pk.build_package(add, (2, 2))
    for w in workers:
        exit_code, outcome, logs = _run_service(docker_manager, cluster, w["node_id"], data)
        assert exit_code == 0, logs
        assert outcome.ok and outcome.value == 4, logs
        assert "adding 2 2" in logs and "[cumulus] job finished in" in logs
    assert not docker_manager.services.list(filters={"label": "cumulus.test=runner"})


def test_runner_in_image_user_error(docker_manager, cluster, workers):
    exit_code, outcome, logs = _run_service(docker_manager, cluster, workers[0]["node_id"],
                                            pk.build_package(fails))
    assert exit_code == 1, logs
    with pytest.raises(KeyError, match="missing") as ei:
        outcome.result()
    assert "in fails" in str(ei.value.__cause__)


def test_image_cloudpickle_matches_client(docker_manager, cluster):
    """The image carries the client's exact cloudpickle and msgpack (pickles by value are version-bound)."""
    import importlib.metadata

    out = docker_manager.containers.run(
        cluster["image_id"], ["python3", "-c", "from importlib.metadata import version as v; "
                              "print(v('cloudpickle'), v('msgpack'))"],
        network_mode="none", remove=True)
    assert out.decode().split() == [importlib.metadata.version("cloudpickle"), importlib.metadata.version("msgpack")]


def _wheel() -> tuple[str, bytes]:
    """A minimal pure-Python wheel, cumulus-testpkg 0.1 (VALUE = 42)."""
    import io
    import zipfile

    files = {
        "cumulus_testpkg/__init__.py": "VALUE = 42\n",
        "cumulus_testpkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: cumulus-testpkg\nVersion: 0.1\n",
        "cumulus_testpkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n",
    }
    files["cumulus_testpkg-0.1.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + \
        "cumulus_testpkg-0.1.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, t in files.items():
            zf.writestr(n, t)
    return "cumulus_testpkg-0.1-py3-none-any.whl", buf.getvalue()


def uses_testpkg():
    import cumulus_testpkg

    return cumulus_testpkg.VALUE


def test_runner_in_image_installs_requirements_offline(docker_manager, cluster, workers):
    """The image's pip (bootstrapped from its wheel) installs job requirements from a wheelhouse, no network."""
    name, blob = _wheel()
    data = pk.build_package(uses_testpkg, requirements=["cumulus-testpkg==0.1"])
    exit_code, outcome, logs = _run_service(docker_manager, cluster, workers[-1]["node_id"], data,
                                            wheels={name: blob})
    assert exit_code == 0, logs
    assert outcome.value == 42, logs
    assert "requirements installed" in logs
