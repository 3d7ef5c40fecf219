"""Random sequences of calls, crashes, terminations and cancellations through a small tree.

Whatever happens, no call hangs and every resource any actor incarnation acquired is released exactly once.
"""

from __future__ import annotations

import itertools
from collections import Counter
from contextlib import asynccontextmanager

import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cumulus.actors import Actor, ActorDied
from cumulus.errors import NotFound, SupervisorGaveUp
from cumulus.supervisor import ChildSpec, DynamicSupervisor, Restart, Strategy, Supervisor
from tests.trio_watchdog import hang_watchdog

NAMES = ["a", "b", "c"]


class Ledger:
    def __init__(self) -> None:
        self.acquired: Counter[int] = Counter()
        self.released: Counter[int] = Counter()
        self.ids = itertools.count()


class Leaf(Actor):
    def __init__(self, name: str, ledger: Ledger) -> None:
        super().__init__(name)
        self.ledger = ledger

    @asynccontextmanager
    async def _resource(self):
        rid = next(self.ledger.ids)
        self.ledger.acquired[rid] += 1
        try:
            yield rid
        finally:
            await trio.sleep(0.05)  # a release with checkpoints: only survives cancellation when shielded
            self.ledger.released[rid] += 1

    async def on_start(self):
        await trio.sleep(0.01)
        await self.owner.own(self._resource(), what="resource")

    async def handle(self, message):
        if message == "crash":
            raise RuntimeError("crash")
        if message == "slow":
            await trio.sleep(1)
        if message == "stop":
            self.stop()
        return "ok"


operations = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["call", "crash", "slow", "stop"]), st.sampled_from(NAMES)),
        st.tuples(st.sampled_from(["dyn_start", "dyn_terminate", "dyn_call", "dyn_crash"]), st.integers(0, 2)),
        st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.02, 0.5, 2.0])),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@example(  # the caller of own() cancelled while the resource was entered: its release was cancelled too (a leak)
    ops=[("call", "a"), ("call", "a"), ("slow", "a"), ("crash", "a"), ("call", "b"), ("sleep", 0.02),
         ("sleep", 0.02), ("sleep", 0.02)],
    strategy=Strategy.ONE_FOR_ONE, restarts=Restart.PERMANENT, cancel_after=2.0, concurrent=False)
@example(  # a dynamic child that finished starting after its supervisor's final stop: never stopped (a hang)
    ops=[("sleep", 0.02), ("dyn_terminate", 0), ("crash", "c"), ("sleep", 0.02), ("slow", "b"), ("sleep", 0.02),
         ("dyn_start", 0), ("stop", "b"), ("stop", "a"), ("dyn_terminate", 0), ("slow", "b"), ("dyn_start", 0),
         ("dyn_call", 0), ("dyn_start", 0)],
    strategy=Strategy.ONE_FOR_ALL, restarts=Restart.TRANSIENT, cancel_after=3.4649452685802813, concurrent=False)
@given(
    ops=operations,
    strategy=st.sampled_from(list(Strategy)),
    restarts=st.sampled_from(list(Restart)),
    cancel_after=st.floats(0.0, 5.0),
    concurrent=st.booleans(),
)
def test_random_faults_never_hang_and_release_everything_exactly_once(ops, strategy, restarts, cancel_after, concurrent):
    ledger = Ledger()
    trio.run(_scenario, ops, strategy, restarts, cancel_after, concurrent, ledger,
             clock=trio.testing.MockClock(autojump_threshold=0))
    assert ledger.acquired.keys() == ledger.released.keys()
    assert set(ledger.released.values()) <= {1}


async def _scenario(ops, strategy, restart, cancel_after, concurrent, ledger):
    dyn = DynamicSupervisor(name="dyn", max_restarts=1000)
    children = [ChildSpec.actor(name, lambda name=name: Leaf(name, ledger), restart) for name in NAMES]
    children.insert(1, ChildSpec.supervisor("dyn", lambda: dyn))
    root = Supervisor(children, strategy=strategy, max_restarts=4, max_seconds=3, name="root")

    async def call(ref, message):
        if ref is None:
            return
        try:
            await ref.call(message)
        except (RuntimeError, ActorDied):
            pass

    async def run_op(op, arg):
        current_dyn = root.whereis("dyn")
        if op in ("call", "crash", "slow", "stop"):
            await call(root.whereis(arg), op if op != "call" else "hello")
        elif op == "dyn_start" and current_dyn is not None:
            try:
                await current_dyn.start_actor(f"job{arg}", lambda: Leaf(f"job{arg}", ledger))
            except (ValueError, RuntimeError):
                pass  # already running, or the dynamic supervisor is shutting down
        elif op == "dyn_terminate" and current_dyn is not None:
            try:
                await current_dyn.terminate_child(f"job{arg}")
            except NotFound:
                pass
        elif op in ("dyn_call", "dyn_crash") and current_dyn is not None:
            await call(current_dyn.whereis(f"job{arg}"), "crash" if op == "dyn_crash" else "hello")
        elif op == "sleep":
            await trio.sleep(arg)

    what = f"ops={ops} strategy={strategy} restart={restart} cancel_after={cancel_after} concurrent={concurrent}"
    try:
        # autojump clock: a hang jumps straight to fail_after and fails the example; one the clock cannot end
        # (shielded, or busy) is ended by the wall-clock watchdog, which prints the example and the task tree.
        async with hang_watchdog(60, what):
            with trio.fail_after(1000):
                async with trio.open_nursery() as nursery:
                    await nursery.start(root.run)
                    nursery.cancel_scope.deadline = trio.current_time() + cancel_after
                    async with trio.open_nursery() as ops_nursery:
                        for op, arg in ops:
                            if concurrent:
                                ops_nursery.start_soon(run_op, op, arg)
                                await trio.sleep(0)
                            else:
                                await run_op(op, arg)
                    nursery.cancel_scope.cancel()
    except* SupervisorGaveUp:
        pass  # too many crashes in the window: the tree stopped itself, which must also release everything
