"""The supervisor's local checkpoint store (cumulus.resources.checkpoint_store): numbered, retained, atomic,
private files per job under a root next to the journal."""

from __future__ import annotations

import os
import stat

import pytest

from cumulus.errors import InvalidRequest
from cumulus.resources import checkpoint_store
from cumulus.resources.checkpoint_store import LocalCheckpointStore, StoredCheckpoint, store_root_for


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_put_latest_read_list(tmp_path):
    store = LocalCheckpointStore(tmp_path / "checkpoints")
    assert await store.latest("job-1") is None and await store.list("job-1") == []
    first = await store.put("job-1", 0, b"zero")
    second = await store.put("job-1", 40, b"forty!")
    assert (first.job_id, first.seq, first.step, first.size) == ("job-1", 1, 0, 4)
    assert (second.seq, second.step, second.size) == (2, 40, 6) and second.saved_at >= first.saved_at
    latest = await store.latest("job-1")
    assert (latest.seq, latest.step, latest.size) == (2, 40, 6)
    assert await store.read(latest) == b"forty!" and await store.read(first) == b"zero"
    assert [(c.seq, c.step) for c in await store.list("job-1")] == [(1, 0), (2, 40)]
    assert sorted(os.listdir(tmp_path / "checkpoints" / "job-1")) == ["0000000001-0.ckpt", "0000000002-40.ckpt"]
    assert await store.list("job-2") == []  # jobs are apart


async def test_only_the_newest_are_kept(tmp_path):
    store = LocalCheckpointStore(tmp_path, keep=3)
    for step in range(5):
        await store.put("job-1", step * 10, b"x" * step)
    assert [(c.seq, c.step) for c in await store.list("job-1")] == [(3, 20), (4, 30), (5, 40)]
    assert len(os.listdir(tmp_path / "job-1")) == 3
    assert await store.read((await store.list("job-1"))[0]) == b"xx"


async def test_the_sequence_goes_on_after_reopening(tmp_path):
    await LocalCheckpointStore(tmp_path).put("job-1", 5, b"a")
    await LocalCheckpointStore(tmp_path).put("job-1", 6, b"b")
    reopened = LocalCheckpointStore(tmp_path)
    stored = await reopened.put("job-1", 7, b"c")
    assert stored.seq == 3
    assert (await reopened.latest("job-1")).step == 7


async def test_files_are_private(tmp_path):
    root = tmp_path / "state" / "checkpoints"
    stored = await LocalCheckpointStore(root).put("job-1", 1, b"secret weights")
    assert mode(root) == 0o700 and mode(root / "job-1") == 0o700
    assert mode(root / "job-1" / f"{stored.seq:010d}-{stored.step}.ckpt") == 0o600


@pytest.mark.parametrize("job_id", ["", "../escape", "Job", "a/b", "-x", "x" * 64, ".tmp-x"])
async def test_an_invalid_job_id_is_refused(tmp_path, job_id):
    store = LocalCheckpointStore(tmp_path / "root")
    with pytest.raises(InvalidRequest, match="invalid job id"):
        await store.put(job_id, 0, b"x")
    for call in (store.latest, store.list, store.remove_job):
        with pytest.raises(InvalidRequest, match="invalid job id"):
            await call(job_id)
    with pytest.raises(InvalidRequest, match="invalid job id"):
        await store.read(StoredCheckpoint(job_id, 1, 0, 1, 0.0))
    assert not (tmp_path / "root").exists() and not (tmp_path / "escape").exists()


async def test_temp_files_and_foreign_names_are_ignored(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    await store.put("job-1", 3, b"real")
    job_dir = tmp_path / "job-1"
    (job_dir / ".tmp-0123abcd").write_bytes(b"half written")
    (job_dir / ".tmp-0000000009-9.ckpt").write_bytes(b"half written")
    (job_dir / "0000000008-1.ckpt.bak").write_bytes(b"foreign")
    (job_dir / "notes.txt").write_text("foreign")
    (job_dir / "0000000050-1.ckpt").mkdir()  # not a plain file
    os.symlink(job_dir / "notes.txt", job_dir / "0000000060-1.ckpt")
    assert [(c.seq, c.step) for c in await store.list("job-1")] == [(1, 3)]
    assert (await store.latest("job-1")).seq == 1
    assert (await store.put("job-1", 4, b"next")).seq == 2


async def test_a_failed_put_leaves_nothing(tmp_path, monkeypatch):
    store = LocalCheckpointStore(tmp_path)
    await store.put("job-1", 1, b"kept")

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="No space left"):
        patched.setattr(checkpoint_store.os, "replace", crash)
        await store.put("job-1", 2, b"lost")
    assert os.listdir(tmp_path / "job-1") == ["0000000001-1.ckpt"]
    assert await store.read(await store.latest("job-1")) == b"kept"


async def test_remove_job_is_idempotent(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    for step in range(2):
        await store.put("job-1", step, b"x")
    await store.put("job-2", 0, b"y")
    assert await store.remove_job("job-1") == 2
    assert await store.remove_job("job-1") == 0
    assert not (tmp_path / "job-1").exists() and await store.list("job-1") == []
    assert len(await store.list("job-2")) == 1  # another job's stay
    with pytest.raises(FileNotFoundError):
        await store.read(StoredCheckpoint("job-1", 1, 0, 1, 0.0))


async def test_a_bad_step_or_keep_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep must be at least 1"):
        LocalCheckpointStore(tmp_path, keep=0)
    store = LocalCheckpointStore(tmp_path)
    for step in (-1, True, "3"):
        with pytest.raises(ValueError, match="non-negative int"):
            await store.put("job-1", step, b"x")


def test_the_store_root_is_next_to_the_journal(tmp_path):
    assert store_root_for(str(tmp_path / "state" / "journal.db")) == str(tmp_path / "state" / "checkpoints")
    assert store_root_for(":memory:") == ""
