"""`cumulus local up` survives being interrupted: its children stop with it, leftovers of a killed run are found
by their mark, deletes never cross a mount point, and binaries are looked up when used. Needs root (mounts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cumulus.local import children, util
from cumulus.local.util import LocalClusterError, Progress, binary, mounts_under, pid_alive, remove_tree


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(autouse=True)
def fresh_run_state(monkeypatch):
    monkeypatch.setattr(children, "_stopping", threading.Event())
    monkeypatch.setattr(children, "_live", set())


def test_remove_tree_never_deletes_through_a_mount(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not yours")
    tree = tmp_path / "rootfs"
    (tree / "proc").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "etc" / "file").write_text("x")
    subprocess.run(["mount", "--bind", str(outside), str(tree / "proc")], check=True)
    try:
        remove_tree(tree)
    finally:
        subprocess.run(["umount", "-l", str(tree / "proc")], capture_output=True)
    assert not tree.exists()
    assert (outside / "keep.txt").read_text() == "not yours"
    assert mounts_under(tmp_path) == []


def test_remove_tree_refuses_when_a_mount_stays(tmp_path: Path, monkeypatch) -> None:
    tree = tmp_path / "rootfs"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    monkeypatch.setattr(util, "unmount_under", lambda path: 0)
    monkeypatch.setattr(util, "mounts_under", lambda path: [str(tree / "sub")])
    with pytest.raises(LocalClusterError, match="still mounted"):
        remove_tree(tree)
    assert (tree / "sub" / "file").exists()


def test_run_reports_output_and_failure() -> None:
    seen: list[str] = []
    done = children.run(["sh", "-c", "echo one; echo two >&2"], on_line=seen.append)
    assert seen == ["one", "two"] and done.stdout == "one\ntwo"
    with pytest.raises(LocalClusterError, match=r"rc=3.*\n.*boom"):
        children.run(["sh", "-c", "echo boom; exit 3"])
    with pytest.raises(LocalClusterError, match="timed out after"):
        children.run(["sleep", "30"], timeout=0.3)


def _grandchild_pid(tmp_path: Path) -> tuple[list[str], Path]:
    pidfile = tmp_path / "grandchild.pid"
    return ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], pidfile


def test_interrupted_caller_kills_the_whole_group(tmp_path: Path) -> None:
    cmd, pidfile = _grandchild_pid(tmp_path)
    errors: list[BaseException] = []

    def background() -> None:
        try:
            children.run(cmd)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=background)
    thread.start()
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
    grandchild = int(pidfile.read_text())
    assert children.stop_all() == 1
    thread.join(10)
    assert not thread.is_alive() and errors
    assert wait_until(lambda: not pid_alive(grandchild))
    with pytest.raises(LocalClusterError, match="stopping"):
        children.run(["true"])


def test_leftovers_of_a_killed_run_are_stopped_by_the_next(tmp_path: Path) -> None:
    # A run SIGKILLed mid-step: its direct child dies with it (PDEATHSIG), the grandchild is left.
    cmd, pidfile = _grandchild_pid(tmp_path)
    code = ("import sys; from cumulus.local import children; children.RUN_ID = 'deadbeef'; "
            f"children.run({cmd!r})")
    parent = subprocess.Popen([sys.executable, "-c", code])
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
    grandchild = int(pidfile.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    time.sleep(0.2)
    assert pid_alive(grandchild)
    ours = subprocess.Popen(["sleep", "300"], env={**os.environ, children.MARK: children.RUN_ID})
    try:
        assert children.stop_leftovers() >= 1
        assert wait_until(lambda: not pid_alive(grandchild))
        assert ours.poll() is None
    finally:
        ours.kill()
        ours.wait()


def test_binaries_are_found_in_sbin_when_path_lacks_it(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert binary("sh") in ("/usr/bin/sh", "/bin/sh")
    assert binary("docker", prefer=("/bin/sh",)) == "/bin/sh"
    with pytest.raises(LocalClusterError, match="no-such-binary-xyz not found on PATH or in /usr/local/sbin"):
        binary("no-such-binary-xyz")


def test_steps_are_printed_when_they_start(capsys) -> None:
    progress = Progress(detail_every=0)
    with progress.step("packages (apt)"):
        print("inside", file=sys.stderr)
        progress.detail("apt")("Unpacking docker.io ...")
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("packages (apt) ...") and err[1] == "inside"
    assert err[2].endswith("apt: Unpacking docker.io ...") and "packages (apt): done in" in err[3]
    with pytest.raises(KeyboardInterrupt), progress.step("worker image"):
        raise KeyboardInterrupt
    assert "worker image: interrupted after" in capsys.readouterr().err
