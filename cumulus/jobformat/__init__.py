"""The job request rules that the SDK and the supervisor share (so neither imports the other's modules).

Stdlib only: the SDK checks a request before sending it, the supervisor checks it again on arrival, with the same
function and the same message.
"""

from __future__ import annotations

import math

from cumulus.errors import InvalidRequest

MAX_WHOLE_GPUS = 8


def check_gpu_share(gpu: float) -> float:
    """Return ``gpu`` if it is a valid request: a share 0 < g <= 1 of one device, or a whole number 1..8.

    Raises InvalidRequest saying what is allowed otherwise.
    """
    allowed = "a share of one device 0 < gpu <= 1 (e.g. 0.25, 0.5) or a whole number of devices 1..8"
    if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or not math.isfinite(gpu):
        raise InvalidRequest(f"gpu={gpu!r} is not a number; use {allowed}")
    if 0 < gpu <= 1 or (float(gpu).is_integer() and 1 <= gpu <= MAX_WHOLE_GPUS):
        return float(gpu)
    raise InvalidRequest(f"gpu={gpu!r} is not allowed; use {allowed}")
