"""A submission returns once its job is in the journal file (a supervisor that crashes right after a client got
its job id still knows the job), also when many come at once."""

from __future__ import annotations

import sqlite3

import trio

from tests.test_job_lifecycle import fake_cluster, spec


def journaled(path, job_id: str) -> bool:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is not None


async def test_submit_returns_once_the_job_is_in_the_journal_file(tmp_path):
    path = tmp_path / "journal.sqlite3"
    async with fake_cluster(workers=1, **{"journal.path": str(path)}) as (sup, world):
        for _ in range(5):
            record = await sup.submit(spec(runtime=0.1))
            assert journaled(path, record.job_id)  # read at once, by another connection


async def test_each_of_many_concurrent_submissions_is_journaled_when_it_returns(tmp_path):
    path = tmp_path / "journal.sqlite3"
    async with fake_cluster(workers=1, **{"journal.path": str(path)}) as (sup, world):
        records = []

        async def submit() -> None:
            record = await sup.submit(spec(runtime=0.1))
            assert journaled(path, record.job_id)
            records.append(record)

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(submit)
        assert len(records) == 40
        for record in records:
            await record.torn_down.wait()
