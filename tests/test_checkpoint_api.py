"""The in-job checkpoint API (cumulus.checkpoint, cumulus.should_pause): harmless outside a job; inside one (its env
set by hand here, as the supervisor sets it in the container) saves are atomic, bounded, numbered, pruned and
announced on stderr, and load() returns the newest or the restored checkpoint."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import threading

import pytest

import cumulus
from cumulus import checkpoint

ENV = (checkpoint.DIR_ENV, checkpoint.RESTORE_ENV, checkpoint.RESTORE_STEP_ENV, checkpoint.MAX_BYTES_ENV,
       checkpoint.PAUSE_FILE_ENV)


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test is a new job process: no env of the supervisor, no save yet, no pause acknowledged."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(checkpoint, "_seq", 0)
    monkeypatch.setattr(checkpoint, "_last_step", None)
    monkeypatch.setattr(checkpoint, "_pause_acknowledged", False)


@pytest.fixture
def job_dir(tmp_path, monkeypatch):
    """Inside a job: CUMULUS_CHECKPOINT_DIR set (not created yet: save creates it)."""
    directory = tmp_path / "output" / "checkpoints"
    monkeypatch.setenv(checkpoint.DIR_ENV, str(directory))
    return directory


def names(directory) -> list[str]:
    return sorted(os.listdir(directory))


# ---- outside a job --------------------------------------------------------------------------------------------


def test_harmless_outside_a_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(checkpoint.RESTORE_ENV, str(tmp_path / "restore.bin"))  # no dir: still outside a job
    (tmp_path / "restore.bin").write_bytes(pickle.dumps("restored"))
    assert checkpoint.save({"model": 1}) is None
    assert checkpoint.save({"model": 1}, step=3) is None
    assert checkpoint.load() is None and checkpoint.latest_step() is None
    assert cumulus.should_pause() is False and checkpoint.pause_acknowledged() is False
    assert names(tmp_path) == ["restore.bin"]  # nothing written


def test_a_bad_step_is_refused_outside_a_job_too():
    with pytest.raises(TypeError, match="non-negative int or None, not str"):
        checkpoint.save(1, step="3")


def test_import_cumulus_stays_cheap_and_exposes_the_api():
    code = ("import sys, cumulus; assert 'cumulus.checkpoint' not in sys.modules; "
            "assert cumulus.should_pause is cumulus.checkpoint.should_pause; "
            "assert cumulus.checkpoint.save(1) is None and cumulus.should_pause() is False; "
            "assert 'cloudpickle' not in sys.modules; "
            "assert {'checkpoint', 'should_pause'} <= set(cumulus.__all__)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# ---- save and load ---------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(job_dir):
    assert checkpoint.load() is None and checkpoint.latest_step() is None
    state = {"weights": [1.0, 2.0], "fn": lambda x: x + 1}  # cloudpickle: a lambda too
    assert checkpoint.save(state) == 0
    loaded = checkpoint.load()
    assert loaded["weights"] == [1.0, 2.0] and loaded["fn"](1) == 2
    assert checkpoint.latest_step() == 0
    assert names(job_dir) == ["ckpt-00000001-0.bin"]
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((job_dir / "ckpt-00000001-0.bin").stat().st_mode) == 0o600


def test_default_steps_count_from_zero_then_follow_the_last_save(job_dir):
    assert [checkpoint.save(i) for i in range(3)] == [0, 1, 2]
    assert checkpoint.save("x", step=40) == 40
    assert checkpoint.save("y") == 41
    assert checkpoint.save("z", step=7) == 7  # an explicit step may go back: it is the job's own counter
    assert checkpoint.latest_step() == 7 and checkpoint.load() == "z"


def test_default_step_continues_from_the_restored_step(job_dir, monkeypatch):
    monkeypatch.setenv(checkpoint.RESTORE_STEP_ENV, "41")
    assert checkpoint.save("a") == 42
    assert checkpoint.save("b") == 43


@pytest.mark.parametrize("bad, error", [("3", TypeError), (1.5, TypeError), (True, TypeError), (False, TypeError),
                                        (-1, ValueError)])
def test_bad_steps_are_refused(job_dir, bad, error):
    with pytest.raises(error, match="checkpoint step must be a non-negative int or None"):
        checkpoint.save("x", step=bad)
    assert not job_dir.exists()


def test_only_the_newest_two_are_kept(job_dir):
    for i in range(5):
        checkpoint.save({"i": i})
    assert names(job_dir) == ["ckpt-00000004-3.bin", "ckpt-00000005-4.bin"]
    assert checkpoint.load() == {"i": 4}


def test_concurrent_saves_get_distinct_numbers(job_dir):
    threads = [threading.Thread(target=checkpoint.save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert names(job_dir) == ["ckpt-00000007-6.bin", "ckpt-00000008-7.bin"]


def test_leftover_checkpoints_in_the_directory_keep_the_order(job_dir):
    """A directory that already holds checkpoints (not this process's) is continued, never overtaken."""
    job_dir.mkdir(parents=True)
    (job_dir / "ckpt-00000007-3.bin").write_bytes(pickle.dumps("old"))
    assert checkpoint.save("new") == 0
    assert names(job_dir) == ["ckpt-00000007-3.bin", "ckpt-00000008-0.bin"]
    assert checkpoint.load() == "new"


# ---- atomicity --------------------------------------------------------------------------------------------------


def test_temp_files_are_never_loaded(job_dir):
    job_dir.mkdir(parents=True)
    good = pickle.dumps({"complete": True})
    (job_dir / ".tmp-123-abc.part").write_bytes(good[: len(good) // 2])  # a save cut short
    (job_dir / ".tmp-ckpt-99999999-9.bin").write_bytes(b"garbage")
    assert checkpoint.load() is None and checkpoint.latest_step() is None
    assert checkpoint.save({"complete": True}) == 0
    (job_dir / ".tmp-999-def.part").write_bytes(b"\x80\x05garbage")  # newer, still never considered
    assert checkpoint.load() == {"complete": True}


def test_a_crash_during_a_save_leaves_the_previous_checkpoint(job_dir, monkeypatch):
    assert checkpoint.save({"step": "first"}) == 0

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="No space left"):
        patched.setattr(checkpoint.os, "replace", crash)
        checkpoint.save({"step": "second"})
    assert checkpoint.load() == {"step": "first"} and checkpoint.latest_step() == 0
    assert names(job_dir) == ["ckpt-00000001-0.bin"]  # the temp file is gone too


def test_a_failed_write_leaves_no_temp_file(job_dir, monkeypatch):
    checkpoint.save("kept")

    def fail(fd):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="Input/output"):
        patched.setattr(checkpoint.os, "fsync", fail)
        checkpoint.save("lost")
    assert names(job_dir) == ["ckpt-00000001-0.bin"] and checkpoint.load() == "kept"


# ---- the size limit ---------------------------------------------------------------------------------------------


def test_a_checkpoint_over_the_limit_is_refused_clearly(job_dir, monkeypatch):
    monkeypatch.setenv(checkpoint.MAX_BYTES_ENV, str(2 * 1024 * 1024))
    with pytest.raises(checkpoint.CheckpointTooLarge) as ei:
        checkpoint.save(b"x" * (3 * 1024 * 1024))
    assert isinstance(ei.value, ValueError)
    message = str(ei.value)
    assert "bytes" in message and "3.0 MiB" in message and "limit of 2 MiB" in message
    assert "save less (e.g. model and optimizer state only) or ask the operator to raise jobs.max_checkpoint_mb" \
        in message
    assert not job_dir.exists() or names(job_dir) == []
    assert checkpoint.save(b"x" * 1024) == 0  # the refused save used no step


@pytest.mark.parametrize("value", [None, "", "abc", "0", "-5"])
def test_the_limit_defaults_to_256_mib(monkeypatch, value):
    if value is not None:
        monkeypatch.setenv(checkpoint.MAX_BYTES_ENV, value)
    assert checkpoint.max_bytes() == 256 * 1024 * 1024


# ---- restore -----------------------------------------------------------------------------------------------------


def test_load_falls_back_to_the_restore_file(job_dir, tmp_path, monkeypatch):
    restore = tmp_path / "code" / "checkpoint.bin"
    monkeypatch.setenv(checkpoint.RESTORE_ENV, str(restore))
    monkeypatch.setenv(checkpoint.RESTORE_STEP_ENV, "9")
    assert checkpoint.load() is None and checkpoint.latest_step() is None  # the file may be absent: none
    restore.parent.mkdir()
    restore.write_bytes(pickle.dumps({"restored": 9}))
    assert checkpoint.load() == {"restored": 9} and checkpoint.latest_step() == 9
    assert checkpoint.save({"mine": 10}) == 10
    assert checkpoint.load() == {"mine": 10} and checkpoint.latest_step() == 10


# ---- pause -------------------------------------------------------------------------------------------------------


def test_should_pause_follows_the_pause_file(tmp_path, monkeypatch):
    pause = tmp_path / "lease" / "pause"
    monkeypatch.setenv(checkpoint.PAUSE_FILE_ENV, str(pause))
    assert cumulus.should_pause() is False and checkpoint.pause_acknowledged() is False
    pause.parent.mkdir()
    pause.touch()
    assert checkpoint.pause_acknowledged() is False  # asked, not yet seen
    assert cumulus.should_pause() is True and checkpoint.pause_acknowledged() is True
    pause.unlink()
    assert cumulus.should_pause() is False and checkpoint.pause_acknowledged() is True  # answered once: stays


def test_a_save_after_the_pause_was_asked_acknowledges_it(job_dir, tmp_path, monkeypatch):
    pause = tmp_path / "pause"
    monkeypatch.setenv(checkpoint.PAUSE_FILE_ENV, str(pause))
    checkpoint.save("before")
    assert checkpoint.pause_acknowledged() is False
    pause.touch()
    checkpoint.save("after")
    assert checkpoint.pause_acknowledged() is True


# ---- the marker line ---------------------------------------------------------------------------------------------


def test_each_save_announces_its_file_on_stderr(job_dir, capfd):
    checkpoint.save("a" * 100)
    checkpoint.save({"b": 2}, step=40)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2
    matches = [checkpoint.CHECKPOINT_LINE.match(line) for line in lines]
    assert all(matches)
    assert [m.group(1) for m in matches] == ["ckpt-00000001-0.bin", "ckpt-00000002-40.bin"]
    assert int(matches[1].group(2)) == (job_dir / "ckpt-00000002-40.bin").stat().st_size
    assert lines[1] == f"[cumulus] checkpoint ckpt-00000002-40.bin ({matches[1].group(2)} bytes)"


def test_the_marker_reaches_fd_2_when_the_job_replaced_sys_stderr(job_dir, capfd, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    checkpoint.save("x")
    assert checkpoint.CHECKPOINT_LINE.match(capfd.readouterr().err.strip())


@pytest.mark.parametrize("name, step", [("ckpt-00000003-40.bin", 40), ("ckpt-00000001-0.bin", 0)])
def test_checkpoint_name_step(name, step):
    assert checkpoint.checkpoint_name_step(name) == step


@pytest.mark.parametrize("name", ["ckpt-3-40.bin", ".tmp-ckpt-00000003-40.bin", "ckpt-00000003-40.bin.part",
                                  "ckpt-00000003--1.bin", "ckpt-00000003-x.bin", ""])
def test_checkpoint_name_step_refuses_other_names(name):
    with pytest.raises(ValueError, match="not a checkpoint file name"):
        checkpoint.checkpoint_name_step(name)
