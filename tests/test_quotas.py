"""The per-user admission policy on its own (cumulus/quotas.py, cumulus/idempotency.py): usage counting, limit
checks and their messages, the token bucket (with a clock passed in), and request fingerprints."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cumulus.errors import AlreadyExists, QuotaExceeded
from cumulus.identity import Limits
from cumulus.idempotency import RequestFingerprint, check_same_request
from cumulus.jobs import JobSpec, JobState
from cumulus.quotas import OwnerHoldings, SubmissionRates, TokenBucket, Usage, burst_of, check_limits

Q, S, R, DONE = JobState.QUEUED, JobState.SCHEDULING, JobState.RUNNING, JobState.COMPLETED


def test_usage_counts_live_jobs_and_tells_waiting_ones_from_the_others():
    # A new job is QUEUED without a position until it asked for a place: it counts as waiting already, so that a
    # burst of submissions cannot pass max_queued before the first of them reached the Scheduler.
    usage = Usage.of([(Q, 0, 0.5), (Q, 2, 1.0), (S, 0, 0.25), (R, 0, 0.25), (DONE, 0, 1.0),
                      (JobState.FAILED, 0, 1.0)])
    assert usage == Usage(running=2, queued=2, gpu=2.0)


def test_a_paused_job_holds_nothing_so_it_uses_no_quota():
    usage = Usage.of([(R, 0, 0.25), (JobState.PAUSED, 0, 1.0)])
    assert usage == Usage(running=1, queued=0, gpu=0.25)


def test_no_limits_admit_anything():
    check_limits(Limits(), Usage(running=1000, queued=1000, gpu=1000.0), 8)


def test_running_jobs_and_gpu_in_use_are_not_admission_limits_they_make_jobs_wait():
    check_limits(Limits(max_running=2, max_gpu=1), Usage(running=2, queued=1, gpu=1.0), 0.5)


def test_max_queued_counts_waiting_jobs_only():
    check_limits(Limits(max_queued=1), Usage(running=5), 0.5)
    with pytest.raises(QuotaExceeded, match=r"^limit max_queued=1 reached: you have 1 jobs waiting in the queue; "
                                            r"retry when one of your jobs ends$"):
        check_limits(Limits(max_queued=1), Usage(running=5, queued=1), 0.5)


def test_holdings_say_when_an_owner_must_wait_for_their_own_jobs():
    holdings = OwnerHoldings()
    alice = JobSpec(package=b"", gpu=0.3, owner="alice", limits=Limits(max_running=2, max_gpu=1))
    assert not holdings.at_limit(alice)
    holdings.add("alice", "a1", 0.1 + 0.2)
    holdings.add("alice", "a2", 0.4)
    assert holdings.held("alice") == (2, pytest.approx(0.7))
    assert holdings.at_limit(alice)  # two running
    holdings.remove("a2")
    holdings.remove("a2")  # idempotent
    assert not holdings.at_limit(alice)  # 0.3 + 0.3 + 0.4 would be 1.0000000000000002: still within max_gpu=1
    assert holdings.at_limit(JobSpec(package=b"", gpu=0.75, owner="alice", limits=Limits(max_gpu=1)))
    assert not holdings.at_limit(JobSpec(package=b"", gpu=0.75, owner="bob", limits=Limits(max_gpu=1)))
    assert not holdings.at_limit(JobSpec(package=b"", gpu=8, owner="alice"))  # no limits
    holdings.remove("a1")
    assert holdings.held("alice") == (0, 0.0)


def test_a_job_larger_than_the_gpu_limit_is_told_it_can_never_fit():
    with pytest.raises(QuotaExceeded, match=r"this job asks gpu=2, more than you may ever hold; ask for at most 1"):
        check_limits(Limits(max_gpu=1), Usage(), 2)


def test_the_bucket_starts_full_and_refills_at_its_rate():
    bucket = TokenBucket(rate=2, burst=4, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.25) == pytest.approx(0.25)  # a refused take takes nothing
    assert bucket.take(100.5) == 0.0
    assert bucket.take(1000.0) == 0.0 and bucket.tokens == pytest.approx(3)  # never more than the burst


def test_the_burst_is_twice_the_rate_and_at_least_one():
    assert burst_of(0.1) == 1 and burst_of(1) == 2 and burst_of(5) == 10


def test_rates_are_per_user_and_name_the_limit_and_the_wait():
    rates = SubmissionRates()
    rates.take("alice", 0.5, 10.0)  # burst 1
    with pytest.raises(QuotaExceeded) as refused:
        rates.take("alice", 0.5, 10.5)
    assert str(refused.value) == ("limit rate=0.5 submissions per second (burst 1) reached; retry in 1.50 s")
    assert refused.value.retry_after == pytest.approx(1.5)
    rates.take("bob", 0.5, 10.5)  # bob has his own bucket
    rates.take("carol", 0, 10.5)  # no limit
    rates.take("alice", 0.5, 12.0)


times = st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(min_value=0.1, max_value=20), gaps=times)
def test_a_bucket_never_admits_more_than_its_burst_plus_its_rate_over_any_window(rate, gaps):
    """Over any window [a, b] of a user's submissions, at most burst + rate x (b - a) are admitted; and a refused
    submission retried after the wait it was told is admitted."""
    burst = burst_of(rate)
    bucket = TokenBucket(rate, burst, now=0.0)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0:
            admitted.append(now)
        else:
            assert wait > 0
            assert copy.copy(bucket).take(now + wait) == 0.0
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - start) + 1e-6


def spec(**kw) -> JobSpec:
    return JobSpec(package=kw.pop("package", b"zip-1"), gpu=0.5, env={"A": "1"}, **kw)


def test_a_fingerprint_ignores_the_owner_and_the_key_and_names_what_differs():
    same = RequestFingerprint.of(spec(owner="alice", idempotency_key="k"))
    assert same == RequestFingerprint.of(spec(owner="bob", idempotency_key="other"))
    assert same.differences(RequestFingerprint.of(spec(package=b"zip-2"))) == ["package"]
    assert same.differences(RequestFingerprint.of(spec(package=b"zip-2", retries=2))) == ["package", "retries"]


def test_a_reused_key_is_refused_without_showing_any_value():
    first = RequestFingerprint.of(spec(secret_env={"TOKEN": "s3cr3t-one"}))
    second = RequestFingerprint.of(spec(secret_env={"TOKEN": "s3cr3t-two"}))
    assert "s3cr3t" not in repr(first)
    check_same_request("k", "unit-1", first, first)
    with pytest.raises(AlreadyExists) as refused:
        check_same_request("k", "unit-1", first, second)
    assert str(refused.value) == ("idempotency key 'k' was used for a different job unit-1 (different secret_env); "
                                  "use a new key")
