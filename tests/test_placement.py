"""The placement policy (cumulus/placement.py): a pure function, tested on its own."""

from __future__ import annotations

from hypothesis import given, strategies as st

from cumulus.devices import DeviceInfo
from cumulus.placement import (BUSY_JOBS, MAX_JOBS_PER_DEVICE, DeviceLoad, NodeView, Request, can_ever_fit,
                               fits_exactly, place)


def device(index: int, used: float = 0.0, *, gpu: bool = True, jobs: int | None = None) -> DeviceLoad:
    info = DeviceInfo(index, f"dev{index}", "gpu" if gpu else "cpu", gpu, 0, f"GPU-{index}" if gpu else None)
    return DeviceLoad(info, used, jobs if jobs is not None else (1 if used else 0))


def node(name: str, *devices: DeviceLoad, jobs: int = 0, available: bool = True) -> NodeView:
    return NodeView(f"id-{name}", name, tuple(devices), jobs, available)


def test_a_share_goes_to_the_partly_used_device_with_least_room_that_fits():
    n = node("a", device(0, 0.0), device(1, 0.5), device(2, 0.75))
    assert place([n], Request(0.25)).device_indexes == (2,)  # 0.25 left on device 2: a perfect fit
    assert place([n], Request(0.5)).device_indexes == (1,)  # device 2 has only 0.25
    assert place([n], Request(0.75)).device_indexes == (0,)  # only the unused one has room


def test_shares_pack_onto_the_busiest_node_until_it_is_busy():
    idle, busy = node("a", device(0), jobs=0), node("b", device(0, 0.5), jobs=1)
    assert place([idle, busy], Request(0.5)).hostname == "b"
    saturated = node("b", device(0, 0.5), jobs=BUSY_JOBS)
    assert place([idle, saturated], Request(0.5)).hostname == "a"  # a busy node comes after the others
    assert place([saturated], Request(0.5)).hostname == "b"  # ...but is still used when it is the only one


def test_tiny_shares_spread_over_nodes_by_their_job_count():
    a, b = node("a", device(0, 0.05), jobs=5), node("b", device(0, 0.02), jobs=2)
    assert place([a, b], Request(0.01)).hostname == "b"
    assert place([a, node("b", device(0, 0.02), jobs=5)], Request(0.01)).hostname == "a"  # ties: by hostname


def test_whole_devices_take_the_best_fitting_node_and_lowest_indexes():
    a = node("a", device(0), device(1), device(2), device(3))
    b = node("b", device(0, 0.5), device(1), device(2))
    choice = place([a, b], Request(2))
    assert (choice.hostname, choice.device_indexes, choice.share) == ("b", (1, 2), 1.0)
    assert place([b], Request(3)) is None
    assert place([a], Request(3)).device_indexes == (0, 1, 2)


def test_non_gpu_devices_are_used_only_when_allowed():
    n = node("a", device(0, gpu=False))
    assert place([n], Request(0.5)) is None
    assert place([n], Request(0.5, allow_non_gpu=True)).device_indexes == (0,)
    assert not can_ever_fit([n], Request(0.5))
    assert can_ever_fit([n], Request(0.5, allow_non_gpu=True))


def test_unavailable_nodes_take_nothing_but_count_for_ever_fitting():
    n = node("a", device(0), device(1), available=False)
    assert place([n], Request(0.5)) is None
    assert can_ever_fit([n], Request(2)) and not can_ever_fit([n], Request(3))


def test_a_device_with_the_most_jobs_allowed_is_full_whatever_share_is_free():
    crowded, roomy = device(0, 0.16, jobs=16), device(1, 0.9, jobs=1)
    n = node("a", crowded, roomy)
    assert place([n], Request(0.05), max_jobs_per_device=16).device_indexes == (1,)  # not the fuller fit, device 0
    assert place([node("a", crowded)], Request(0.01), max_jobs_per_device=16) is None
    assert place([node("a", crowded)], Request(0.01), max_jobs_per_device=17).device_indexes == (0,)
    assert place([node("a", device(0, 0.5, jobs=MAX_JOBS_PER_DEVICE))], Request(0.1)) is None  # the default: 16
    assert MAX_JOBS_PER_DEVICE == 16


def test_a_device_holding_a_job_is_not_free_for_whole_devices_however_small_its_share():
    n = node("a", device(0, 0.0, jobs=1), device(1))  # a share that rounds to nothing is still a job there
    assert place([n], Request(2)) is None
    assert place([node("a", device(0, 0.0, jobs=0), device(1))], Request(2)).device_indexes == (0, 1)


def test_exact_fit_checks_each_named_device():
    n = node("a", device(0, 0.5), device(1, 0.75))
    assert fits_exactly(n, (0,), 0.5) and not fits_exactly(n, (1,), 0.5) and not fits_exactly(n, (7,), 0.1)


SHARES = st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0])


@given(st.lists(SHARES, max_size=60), st.integers(1, 3), st.integers(1, 4), st.integers(1, 20))
def test_placing_one_request_after_another_never_overcommits_a_device(shares, nodes, devices, max_jobs):
    """Apply each choice to the snapshot, as the Scheduler does: no device is ever promised more than whole nor
    holds more than ``max_jobs`` jobs, and a request is refused only when no node could take it."""
    used = {(n, d): 0.0 for n in range(nodes) for d in range(devices)}
    count = dict.fromkeys(used, 0)
    jobs = dict.fromkeys(range(nodes), 0)

    def views():
        return [NodeView(f"id-{n}", f"n{n}", tuple(device(d, used[n, d], jobs=count[n, d]) for d in range(devices)),
                         jobs[n]) for n in range(nodes)]

    for share in shares:
        request = Request(share)
        choice = place(views(), request, max_jobs_per_device=max_jobs)
        if choice is None:
            free_whole = [sum(count[n, d] == 0 for d in range(devices)) for n in range(nodes)]
            if request.whole_devices:
                assert max(free_whole) < request.whole_devices
            else:
                assert all(1.0 - used[key] + 1e-9 < share or count[key] >= max_jobs for key in used)
            continue
        n = int(choice.node_id.removeprefix("id-"))
        assert len(choice.device_indexes) == max(1, request.whole_devices)
        for d in choice.device_indexes:
            used[n, d] += choice.share
            count[n, d] += 1
            assert used[n, d] <= 1.0 + 1e-9 and count[n, d] <= max_jobs
        jobs[n] += 1
