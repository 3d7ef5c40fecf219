"""The requirements cache's pure parts: the cache key, the installer's hardened service spec, and the runner's use
of requirements the supervisor mounted (no pip in the job's container)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cumulus.client import packaging as pk
from cumulus.resources.requirements_cache import cache_key, cache_root, normalise_requirements
from cumulus.resources.requirements_install import (INSTALL_MOUNT, LABEL_FOR_JOB, InstallService,
                                                    build_install_spec, pip_command)
from cumulus.resources.swarm_spec import LABEL_JOB, LABEL_SUPERVISOR

RUNNER = Path(__file__).resolve().parents[1] / "worker_image" / "image" / "runner.py"
IMAGE = "sha256:" + "a" * 64


def test_the_key_is_the_set_of_requirements_and_the_image():
    key = cache_key(["numpy>=1.26", "six"], IMAGE)
    assert len(key) == 64 and int(key, 16) >= 0
    assert cache_key(["six", "  numpy>=1.26 ", "six"], IMAGE) == key  # order, spaces, duplicates
    assert cache_key(["numpy >=1.26", "six"], IMAGE) != key  # a different text is a different entry
    assert cache_key(["numpy>=1.26"], IMAGE) != key
    assert cache_key(["numpy>=1.26", "six"], "sha256:" + "b" * 64) != key  # another image: another Python
    assert normalise_requirements(["b", "a  ==1", "", "a ==1"]) == ("a ==1", "b")
    assert cache_root("/var/lib/cumulus/jobs") == "/var/lib/cumulus/jobs/.requirements"


def install_service(**overrides) -> InstallService:
    fields = dict(name="cumulus-req-0123456789abcdef-00ff00ff", image=IMAGE, node_id="n" * 25, supervisor_id="sup-1",
                  job_id="j-1", key="c" * 64, install_dir="/var/lib/cumulus/jobs/.requirements/.tmp-x", uid=1000,
                  gid=1000)
    fields.update(overrides)
    return InstallService(**fields)


def test_the_installer_is_hardened_like_a_job():
    spec = build_install_spec(install_service(wheelhouse="/var/lib/cumulus/wheelhouse", pids_limit=99))
    container = spec["task_template"]["ContainerSpec"]
    assert container["User"] == "1000:1000"
    assert container["CapabilityDrop"] == ["ALL"] and container["ReadOnly"] is True and container["Init"] is True
    mounts = {m["Target"]: m for m in container["Mounts"]}
    tmp = "/var/lib/cumulus/jobs/.requirements/.tmp-x"
    # Writable: site/ and log/ only, each a mount of its own, so that the installer (which runs the packages'
    # build code) cannot swap them for a symbolic link to elsewhere on the worker; requirements.txt read-only.
    assert {target: (m["Source"], bool(m.get("ReadOnly"))) for target, m in mounts.items() if m["Type"] == "bind"} == {
        f"{INSTALL_MOUNT}/site": (f"{tmp}/site", False), f"{INSTALL_MOUNT}/log": (f"{tmp}/log", False),
        f"{INSTALL_MOUNT}/requirements.txt": (f"{tmp}/requirements.txt", True),
        "/cumulus/wheelhouse": ("/var/lib/cumulus/wheelhouse", True)}
    assert mounts["/tmp"]["Type"] == "tmpfs" and len(mounts) == 5  # nothing else of the worker
    assert spec["task_template"]["Resources"]["Limits"]["Pids"] == 99
    assert spec["task_template"]["Placement"]["Constraints"] == ["node.id==" + "n" * 25]
    # Reaped with its supervisor's orphans, but never taken for a job's service (no cumulus.job_id).
    assert spec["labels"][LABEL_SUPERVISOR] == "sup-1" and spec["labels"][LABEL_FOR_JOB] == "j-1"
    assert LABEL_JOB not in spec["labels"] and LABEL_JOB not in container["Labels"]


def test_the_installer_never_runs_as_root():
    with pytest.raises(ValueError, match="non-root"):
        build_install_spec(install_service(uid=0))


def test_pip_uses_the_wheelhouse_only_when_it_says_so():
    plain = " ".join(pip_command(install_service()))
    assert "--target /cumulus/install/site" in plain and "--no-cache-dir" in plain and "--find-links" not in plain
    offline = " ".join(pip_command(install_service(wheelhouse="/w", no_index=True)))
    assert "--find-links /cumulus/wheelhouse --no-index" in offline


def uses_mounted_package():
    import cumulus_mountedpkg

    return cumulus_mountedpkg.VALUE


def test_the_runner_uses_mounted_requirements_without_pip(tmp_path):
    """With a deps dir mounted, the runner puts it on sys.path and runs no pip (no wheelhouse, no index: pip would
    fail)."""
    deps = tmp_path / "deps"
    (deps / "cumulus_mountedpkg").mkdir(parents=True)
    (deps / "cumulus_mountedpkg" / "__init__.py").write_text("VALUE = 7\n")
    (tmp_path / "code").mkdir()
    package = pk.build_package(uses_mounted_package, requirements=["cumulus-mountedpkg==1.0"])
    (tmp_path / "code" / "package.zip").write_bytes(package)
    env = {"CUMULUS_CODE_DIR": str(tmp_path / "code"), "CUMULUS_OUTPUT_DIR": str(tmp_path / "out"),
           "CUMULUS_WORK_DIR": str(tmp_path), "CUMULUS_DEPS_DIR": str(deps), "PATH": "/usr/bin:/bin",
           "PIP_NO_INDEX": "1"}
    proc = subprocess.run([sys.executable, str(RUNNER)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert pk.decode_result((tmp_path / "out" / "result.msgpack").read_bytes()).value == 7
    assert "installed by the supervisor" in proc.stderr and "[pip]" not in proc.stderr


# ---- what the installer leaves behind is never followed ---------------------------------------------------------


class FakeLocalShell:
    """A fake SSH connection that runs the command in a local shell (the scripts are plain sh)."""

    label = "local"

    async def run(self, command, *, timeout=None, check=True):
        import subprocess
        from types import SimpleNamespace

        proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
        return SimpleNamespace(exit_status=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


def test_an_install_whose_site_was_swapped_for_a_symlink_is_never_put_in_place(tmp_path):
    import subprocess

    from cumulus.resources.requirements_cache import _finalize_script

    tmp, entry = tmp_path / ".tmp-x", tmp_path / "key"
    tmp.mkdir()
    (tmp / "log").mkdir()
    (tmp / "site").symlink_to("/etc")  # what build code in the installer could try, were site/ not a mount
    done = subprocess.run(["sh", "-c", _finalize_script(str(tmp), str(entry))], capture_output=True, text=True)
    assert done.returncode != 0 and not entry.exists()


async def test_the_install_log_is_read_without_following_links_or_blocking_on_a_fifo(tmp_path):
    import os

    from cumulus.resources.requirements_cache import _OutputRelay

    seen = []
    (tmp_path / "link.log").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo.log")
    for name in ("link.log", "fifo.log"):
        relay = _OutputRelay(FakeLocalShell(), str(tmp_path / name), seen.append)
        await relay.poll(final=True)
    assert seen == []
    (tmp_path / "install.log").write_bytes(b"Collecting pkg @ https://user:s3cret@host/pkg.whl\ncaf\xc3\xa9\npart")
    relay = _OutputRelay(FakeLocalShell(), str(tmp_path / "install.log"), seen.append)
    await relay.poll()
    assert seen == ["[pip] Collecting pkg @ https://***@host/pkg.whl", "[pip] caf??"]
    with open(tmp_path / "install.log", "ab") as log:
        log.write(b"ial line\n")
    await relay.poll(final=True)
    assert seen[-1] == "[pip] partial line" and relay.offset == len((tmp_path / "install.log").read_bytes())
