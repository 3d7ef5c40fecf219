"""Jobs that leave something hostile where their result belongs, on the real local cluster: a symbolic link to
another file, a FIFO. Each fails alone (reason ``invalid_result``, saying what it found, not retried), while a
job next to it completes; the link's target is never returned, and nothing of any job is left.
"""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager

import trio

from cumulus.app import open_supervisor
from cumulus.client.packaging import build_package, decode_result
from cumulus.config import load_settings
from cumulus.jobs import FailureReason, JobSpec, JobState

from helpers import assert_nothing_left, wait_workers_healthy

SID = f"th-{secrets.token_hex(4)}"  # this module's own supervisor id: orphan reaping leaves others alone
HANG_GUARD = 120  # fails a hang; nothing is asserted about time


def symlinked_result():
    import os

    out = os.environ.get("CUMULUS_OUTPUT_DIR", "/cumulus/output")
    code = os.environ.get("CUMULUS_CODE_DIR", "/cumulus/code")
    os.symlink(os.path.join(code, "package.zip"), os.path.join(out, "result.msgpack"))
    os._exit(0)  # before the runner could write a result over it


def fifo_result():
    import os

    os.mkfifo(os.path.join(os.environ.get("CUMULUS_OUTPUT_DIR", "/cumulus/output"), "result.msgpack"))
    os._exit(0)


def add(a, b):
    return a + b


def spec(func, *args) -> JobSpec:
    return JobSpec(package=build_package(func, args), gpu=0.3, duration=120, retries=2)


@asynccontextmanager
async def supervisor(worker_count: int):
    settings = load_settings(environ={}, overrides={
        "supervisor_id": SID, "cluster.allow_non_gpu_devices": True, "cluster.poll_interval": 0.1})
    async with open_supervisor(settings, serve_rpc=False) as api:
        await wait_workers_healthy(api, worker_count)
        yield api


async def test_a_symlinked_or_fifo_result_fails_that_job_alone(cluster, workers):
    async with supervisor(len(workers)) as sup:
        link, fifo, ok = [await sup.submit(spec(*job)) for job in ((symlinked_result,), (fifo_result,), (add, 1, 2))]
        with trio.fail_after(HANG_GUARD):
            for record in (link, fifo, ok):
                await record.torn_down.wait()

        assert ok.state is JobState.COMPLETED, (ok.state, ok.reason)
        assert decode_result(ok.result).value == 3
        for record, kind in ((link, "a symbolic link"), (fifo, "a FIFO")):
            assert (record.state, record.failure, record.attempt) == (
                JobState.FAILED, FailureReason.INVALID_RESULT, 1), (record.state, record.reason)
            assert record.reason.startswith(f"invalid_result: output/result.msgpack is {kind}, not a regular file")
            assert record.result is None  # the link's target (the job's package) was never read
        await assert_nothing_left(sup, SID, [link.job_id, fifo.job_id, ok.job_id],
                                  expect={link.job_id: JobState.FAILED, fifo.job_id: JobState.FAILED,
                                          ok.job_id: JobState.COMPLETED})
