"""A job's result as its attempt fetches it (cumulus/actors/result_fetch.py): the limit is what one gRPC message can
deliver, and a result the worker refused to read (no regular file, too large) fails that job with a typed reason
(INVALID_RESULT) that says what to fix and is never retried. A finished job's package leaves memory. Unit tests
on the in-memory fakes; the read itself is tested against a real sshd in tests/test_ssh_files.py.
"""

from __future__ import annotations

import pytest
import trio

from cumulus.actors import attempt as attempt_module
from cumulus.actors.outcome import JobStopped, Outcome, should_retry
from cumulus.actors.result_fetch import MAX_RESULT_BYTES, RESULT_MESSAGE_ROOM, fetch_result, result_limit
from cumulus.jobs import FailureReason, JobState
from cumulus.resources.ssh import NotARegularFile, RemoteFileRefused, RemoteFileTooLarge, SshError
from tests.test_job_lifecycle import assert_nothing_left, fake_cluster, settings, spec

MiB = 1024 * 1024


class Files:
    """A job's files whose result read answers ``answer`` (bytes, None, or an exception to raise)."""

    def __init__(self, answer):
        self.answer, self.limits = answer, []

    async def fetch_result(self, max_bytes: int):
        self.limits.append(max_bytes)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_the_limit_is_what_one_grpc_message_can_carry():
    assert result_limit(settings()) == 64 * MiB - RESULT_MESSAGE_ROOM  # grpc.max_message_mb defaults to 64
    assert result_limit(settings(**{"grpc.max_message_mb": 16})) == 16 * MiB - RESULT_MESSAGE_ROOM
    assert result_limit(settings(**{"grpc.max_message_mb": 1024})) == MAX_RESULT_BYTES


async def test_a_result_is_fetched_within_the_limit():
    files = Files(b"envelope")
    assert await fetch_result(files, settings()) == b"envelope"
    assert files.limits == [64 * MiB - RESULT_MESSAGE_ROOM]
    assert await fetch_result(Files(None), settings()) is None


async def refused(error: Exception) -> Outcome:
    with pytest.raises(JobStopped) as stopped:
        await fetch_result(Files(error), settings())
    outcome = stopped.value.outcome
    assert (outcome.state, outcome.failure, outcome.retry) == (JobState.FAILED, FailureReason.INVALID_RESULT, False)
    assert not should_retry(outcome, attempt=1, retries=5, default_retries=5, retry_exceptions=True)
    return outcome


async def test_a_result_that_is_no_regular_file_fails_the_job_saying_what_it_is():
    outcome = await refused(NotARegularFile("w1:22", "/jobs/j/output/result.msgpack", "a symbolic link"))
    assert outcome.reason == ("invalid_result: output/result.msgpack is a symbolic link, not a regular file (not "
                              "read): the job must leave its result as the plain file the runner writes")
    assert "a FIFO" in (await refused(NotARegularFile("w1:22", "/r", "a FIFO"))).reason
    assert "cannot be read" in (await refused(RemoteFileRefused("w1:22", "/r", "cannot be read: denied"))).reason


async def test_a_result_too_large_to_deliver_fails_the_job_with_its_size_and_the_limit():
    outcome = await refused(RemoteFileTooLarge("w1:22", "/r", 80 * MiB, 64 * MiB - RESULT_MESSAGE_ROOM))
    assert outcome.reason.startswith("invalid_result: the result is 80.0 MiB, over the limit of 63.9 MiB that can "
                                     "be delivered (grpc.max_message_mb = 64); return less")


async def test_an_unreachable_worker_is_no_invalid_result():
    with pytest.raises(SshError) as error:
        await fetch_result(Files(SshError("w1:22", "read /r", "connection lost")), settings())
    assert not isinstance(error.value, JobStopped)


@pytest.mark.parametrize("error", [NotARegularFile("w1:22", "/r", "a FIFO"),
                                   RemoteFileTooLarge("w1:22", "/r", 80 * MiB, 63 * MiB)])
async def test_a_job_whose_result_is_refused_fails_alone_at_once_and_is_not_retried(autojump_clock, monkeypatch,
                                                                                    error):
    async def refusing(files, settings):
        return await fetch_result(Files(error), settings)

    monkeypatch.setattr(attempt_module, "fetch_result", refusing)
    async with fake_cluster(**{"jobs.default_retries": 3}) as (sup, world):
        record = await sup.submit(spec(retries=3))
        with trio.fail_after(60):
            await record.torn_down.wait()
        assert (record.state, record.failure, record.attempt) == (JobState.FAILED, FailureReason.INVALID_RESULT, 1)
        assert record.reason.startswith("invalid_result: ")
        await assert_nothing_left(sup, world, [record])


async def test_a_package_leaves_memory_once_uploaded_and_a_retry_uploads_it_again(autojump_clock):
    async with fake_cluster() as (sup, world):
        retried = await sup.submit(spec(exit_code=1, retries=1, retry_exceptions=True, runtime=5))
        with trio.fail_after(60):
            while retried.state is not JobState.RUNNING:
                await trio.sleep(0.1)
        assert retried.spec.package == b""  # uploaded: only the journal keeps it
        with trio.fail_after(60):
            await retried.torn_down.wait()
        assert retried.attempt == 2 and world.uploads == [(retried.job_id, b"zip")] * 2


async def test_a_finished_job_keeps_no_package_in_memory(autojump_clock):
    async with fake_cluster() as (sup, world):
        done, failed = await sup.submit(spec()), await sup.submit(spec(exit_code=1))
        assert done.spec.package == b"zip"  # kept until its attempt uploaded it
        with trio.fail_after(60):
            await done.torn_down.wait()
            await failed.torn_down.wait()
        assert (done.state, failed.state) == (JobState.COMPLETED, JobState.FAILED)
        assert done.spec.package == failed.spec.package == b""
        assert done.spec.env["FAKE_RUNTIME"] == "1" and done.result is not None  # the rest of the record stays
