"""``await f.remote_async(...)`` (issue 17) under asyncio (``asyncio.run``) and Trio (``trio.run``), against the real
gRPC server on loopback backed by FakeSupervisorApi (``tests/fakes/fake_api.py``, as tests/test_sdk.py: the real job
runner in a subprocess, no Swarm).

The submission is made to block on purpose: the call's argument is a :class:`Gate`, which the pickling of the call
(inside the submission) waits on until a ticker task of the event loop has ticked a few times and opens it. If
``remote_async`` blocked the loop, the ticker could never tick: the gate gives up after ``GATE_TIMEOUT`` seconds and
the test fails saying so.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

import cumulus
from cumulus.client.aio import async_library, run_blocking
from cumulus.errors import InvalidRequest, Unsatisfiable
from tests.sdk_fixtures import address, server  # noqa: F401

GATE_TIMEOUT = 20.0
TICK = 0.01
TICKS_WHILE_BLOCKED = 5
RESULT_TIMEOUT = 60




@cumulus.remote(log_to_driver=False)
def add(a, b):
    return a + b


@cumulus.remote(log_to_driver=False)
def fails(x):
    raise ValueError(f"bad value {x}")


class Gate:
    """An argument whose pickling (in the submission) blocks until :meth:`open` is called; it pickles as ``7``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.thread: int | None = None

    def open(self) -> None:
        self.opened.set()

    def __reduce__(self):
        self.thread = threading.get_ident()
        self.entered.set()
        if not self.opened.wait(GATE_TIMEOUT):
            raise RuntimeError(f"the gate was not opened within {GATE_TIMEOUT:g} s: the event loop did not run "
                               f"while the submission blocked")
        return (int, (7,))


class Ticker:
    """Counts ticks of the event loop; once the gate is entered, opens it after TICKS_WHILE_BLOCKED more."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.ticks = 0
        self.while_blocked = 0

    def tick(self) -> bool:
        """One tick; True when done."""
        self.ticks += 1
        if self.gate.entered.is_set():
            self.while_blocked += 1
            if self.while_blocked >= TICKS_WHILE_BLOCKED:
                self.gate.open()
                return True
        return self.ticks > GATE_TIMEOUT / TICK  # give up with the gate closed (it fails the test by itself)


def assert_ran_beside_the_loop(gate: Gate, ticker: Ticker, loop_thread: int) -> None:
    assert gate.thread is not None and gate.thread != loop_thread, "the submission ran in the event loop's thread"
    assert ticker.while_blocked >= TICKS_WHILE_BLOCKED, ticker.while_blocked


# ---- asyncio --------------------------------------------------------------------------------------------------


def test_remote_async_under_asyncio_keeps_the_loop_running():
    gate = Gate()
    ticker = Ticker(gate)

    async def tick() -> None:
        while not ticker.tick():
            await asyncio.sleep(TICK)

    async def main():
        assert async_library() == "asyncio"
        ticking = asyncio.create_task(tick())
        ref = await add.remote_async(gate, 1)
        await ticking
        return ref, await ref.result_async(timeout=RESULT_TIMEOUT)

    ref, value = asyncio.run(main())
    assert value == 8
    assert ref.status().state == "COMPLETED"
    assert_ran_beside_the_loop(gate, ticker, threading.get_ident())


def test_remote_async_under_asyncio_raises_what_remote_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def main():
        with pytest.raises(Unsatisfiable, match="whole devices"):  # refused by the supervisor
            await add.options(gpu=8).remote_async(1, 1)
        with pytest.raises(InvalidRequest, match="files: 'missing.json' does not exist"):  # refused when packing
            await add.options(files=["missing.json"]).remote_async(1, 1)
        ref = await fails.remote_async(3)  # accepted; the job's own exception comes with its result
        with pytest.raises(ValueError, match="bad value 3"):
            await ref.result_async(timeout=RESULT_TIMEOUT)

    asyncio.run(main())


def test_run_blocking_under_asyncio_uses_a_worker_thread_and_reraises():
    async def main():
        loop_thread = threading.get_ident()
        assert await run_blocking(threading.get_ident) != loop_thread

        def boom():
            raise KeyError("from the thread")

        with pytest.raises(KeyError, match="from the thread"):
            await run_blocking(boom)

    asyncio.run(main())


# ---- Trio -----------------------------------------------------------------------------------------------------


def test_remote_async_under_trio_keeps_the_loop_running():
    gate = Gate()
    ticker = Ticker(gate)
    out = {}

    async def tick() -> None:
        while not ticker.tick():
            await trio.sleep(TICK)

    async def submit() -> None:
        out["ref"] = await add.remote_async(gate, 1)

    async def main():
        assert async_library() == "trio"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            nursery.start_soon(submit)
        return await out["ref"].result_async(timeout=RESULT_TIMEOUT)

    assert trio.run(main) == 8
    assert_ran_beside_the_loop(gate, ticker, threading.get_ident())


def test_remote_async_under_trio_raises_what_remote_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def main():
        with pytest.raises(Unsatisfiable, match="whole devices"):
            await add.options(gpu=8).remote_async(1, 1)
        with pytest.raises(InvalidRequest, match="working_dir='nowhere' is not a directory"):
            await add.options(working_dir="nowhere").remote_async(1, 1)
        ref = await fails.remote_async(4)
        with pytest.raises(ValueError, match="bad value 4"):
            await ref.result_async(timeout=RESULT_TIMEOUT)

    trio.run(main)


def test_run_blocking_under_trio_uses_a_worker_thread_and_reraises():
    async def main():
        loop_thread = threading.get_ident()
        assert await run_blocking(threading.get_ident) != loop_thread

        def boom():
            raise KeyError("from the thread")

        with pytest.raises(KeyError, match="from the thread"):
            await run_blocking(boom)

    trio.run(main)


def test_remote_async_ships_files_and_the_job_reads_them(tmp_path, monkeypatch):
    """The runtime env through the SDK end to end (the fake's runner runs the job in its files area)."""
    (tmp_path / "data.json").write_text('{"answer": 42}')
    monkeypatch.chdir(tmp_path)

    @cumulus.remote(log_to_driver=False, files=["data.json"])
    def read_data():
        import json

        with open("data.json") as f:
            return json.load(f)["answer"]

    async def main():
        ref = await read_data.remote_async()
        return await ref.result_async(timeout=RESULT_TIMEOUT)

    assert trio.run(main) == 42
