"""A user's script: tests/test_typing.py checks it with mypy (it is never run). Every line must type-check.

The inline flags below make mypy refuse untyped SDK names: an untyped ``@cumulus.remote`` fails
``disallow-untyped-decorators``, an untyped call fails ``disallow-untyped-calls``.
"""
# mypy: disallow-untyped-defs, disallow-untyped-calls, disallow-untyped-decorators, disallow-any-generics
# mypy: warn-return-any, disallow-incomplete-defs

from __future__ import annotations

from typing import Any, assert_type

import cumulus
from cumulus import CumulusClient, JobRef


@cumulus.remote
def add(a: int, b: int) -> int:
    return a + b


@cumulus.remote(gpu=0.25, duration=600, requirements=["numpy"], env={"A": "1"})
def greet(name: str, *, excited: bool = False) -> str:
    return f"hello {name}{'!' if excited else ''}"


def use_remote_functions() -> None:
    assert_type(add(1, 2), int)  # a plain call runs locally
    assert_type(greet("x", excited=True), str)

    ref = add.remote(1, 2)
    assert_type(ref, JobRef[int])
    assert_type(ref.result(), int)
    assert_type(ref.result(timeout=5.0), int)
    assert_type(ref.job_id, str)
    assert_type(ref.done(), bool)
    assert_type(greet.remote("x", excited=True).result(), str)

    faster = greet.options(gpu=0.5, timeout=60)
    assert_type(faster.remote("y").result(), str)
    assert_type(faster("y"), str)
    options: dict[str, Any] = {"gpu": 0.25, "retries": 1}  # options built at run time are accepted
    assert_type(greet.options(**options).remote("y", excited=False).result(), str)
    assert_type(cumulus.remote(**options)(len).remote([1, 2]).result(), int)
    assert_type(add.options(retries=1).options(name="add").remote(1, b=2), JobRef[int])

    assert_type(cumulus.get(ref), int)
    assert_type(cumulus.get(ref, timeout=1.0), int)
    assert_type(cumulus.get([add.remote(1, 2), add.remote(3, 4)]), list[int])
    assert_type(cumulus.get((add.remote(1, 2), greet.remote("x"))), list[object])  # mixed: the common base
    ready, pending = cumulus.wait([ref], num_returns=1, timeout=2.0)
    assert_type(ready, list[JobRef[int]])
    assert_type(pending, list[JobRef[int]])


def use_the_client() -> None:
    with CumulusClient("127.0.0.1:50051") as client:
        assert_type(client.submit(greet, "z"), JobRef[str])
        assert_type(client.submit(add, 1, 2, gpu=0.5).result(), int)
        assert_type(client.run(add, 1, 2), int)
        assert_type(client.run(len, "abc"), int)  # any typed function, not only @remote ones
        assert_type(client.job("some-job-id"), JobRef[Any])  # a job submitted elsewhere: its type is unknown


async def use_async() -> None:
    ref = greet.remote("a")
    assert_type(await ref, str)
    assert_type(await ref.result_async(), str)


def use_errors() -> None:
    try:
        add.remote(1, 2).result()
    except cumulus.JobFailed as error:
        assert_type(error, cumulus.JobFailed)
    except cumulus.JobCancelled:
        pass
    except cumulus.RemoteError as error:
        assert_type(error, cumulus.RemoteError)
