"""P6: ActorRef.call round trip vs a raw Trio memory-channel request/reply, measured in the same run.

    python bench/actor_call.py [--calls N] [--rounds R]

Prints both medians (microseconds per round trip) and the ratio (goal <= 1.5x). The baseline is the least a
request/reply over Trio channels can cost: one bounded request channel, a fresh reply channel per call, a server
task that answers. Rounds alternate between the two so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cumulus.actors import Actor, run_actor  # noqa: E402


class Echo(Actor):
    name = "echo"

    async def handle(self, message):
        return message


async def raw_server(requests: trio.MemoryReceiveChannel) -> None:
    async for message, reply in requests:
        with reply:
            reply.send_nowait(message)


async def raw_round(requests: trio.MemorySendChannel, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        reply_send, reply_receive = trio.open_memory_channel(1)
        with reply_receive:
            await requests.send((i, reply_send))
            await reply_receive.receive()
    return (time.perf_counter() - start) / calls


async def actor_round(ref, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await ref.call(i)
    return (time.perf_counter() - start) / calls


async def measure(calls: int, rounds: int) -> tuple[float, float]:
    raw, actor = [], []
    async with trio.open_nursery() as nursery:
        requests_send, requests_receive = trio.open_memory_channel(64)
        nursery.start_soon(raw_server, requests_receive)
        ref = await nursery.start(run_actor, Echo())
        await raw_round(requests_send, calls // 10)  # warm-up
        await actor_round(ref, calls // 10)
        for _ in range(rounds):
            raw.append(await raw_round(requests_send, calls))
            actor.append(await actor_round(ref, calls))
        nursery.cancel_scope.cancel()
    return statistics.median(actor), statistics.median(raw)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    actor, raw = trio.run(measure, args.calls, args.rounds)
    ratio = actor / raw
    print(f"ActorRef.call     median {actor * 1e6:8.2f} us/call")
    print(f"raw channel r/r   median {raw * 1e6:8.2f} us/call")
    print(f"ratio {ratio:.2f}x (goal <= 1.5x)")
    return {"metric": "P6 actor call", "cumulus": actor, "baseline": raw, "ratio": ratio, "goal": "<= 1.5x"}


if __name__ == "__main__":
    main()
