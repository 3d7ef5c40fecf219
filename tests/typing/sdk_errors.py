"""A user's script with type errors: tests/test_typing.py checks that mypy reports exactly the errors marked on
the lines below with an "error" comment and its code (proof that the check can fail). Never run.
"""

from __future__ import annotations

import cumulus


@cumulus.remote(gpu=0.5)
def f(x: int) -> str:
    return str(x)


@cumulus.remote
def g(x: int) -> str:
    return str(x)


def misuse() -> None:
    n: int = f.remote(1).result()  # error: [assignment]
    m: int = g.options(gpu=0.25).remote(1).result()  # error: [assignment]
    f.remote("one")  # error: [arg-type]
    f(1, 2)  # error: [call-arg]
    k: int = cumulus.get(f.remote(1))  # error: [assignment]
    cumulus.remtoe  # error: [attr-defined]
    g.options(gpu="half")  # error: [arg-type]
    cumulus.remote(gpus=1)  # error: [call-overload]
