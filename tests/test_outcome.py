"""Typed outcomes (cumulus/actors/outcome.py): the reason text on the wire, and the retry policy on the enum."""

from __future__ import annotations

import pytest

from cumulus.actors.outcome import COMPLETED, Outcome, should_retry
from cumulus.jobs import FailureReason, JobState

F = FailureReason


@pytest.mark.parametrize(("outcome", "reason"), [
    (COMPLETED, ""),
    (Outcome.failed(F.USER_EXCEPTION), "user_exception"),
    (Outcome.failed(F.TIMEOUT), "timeout"),
    (Outcome.failed(F.NODE_LOST, "connection lost to cw1"), "node_lost: connection lost to cw1"),
    (Outcome.failed(F.QUEUE_TIMEOUT, "no capacity within 5 s"), "queue_timeout: no capacity within 5 s"),
    (Outcome.cancelled("cancelled"), "cancelled"),
    (Outcome.cancelled("supervisor stopped the job"), "supervisor stopped the job"),
])
def test_the_reason_text_is_the_failure_then_its_detail(outcome, reason):
    assert outcome.reason == reason


def retried(outcome, *, attempt=1, retries=0, default=2, exceptions=False):
    return should_retry(outcome, attempt=attempt, retries=retries, default_retries=default,
                        retry_exceptions=exceptions)


@pytest.mark.parametrize("failure", [F.NODE_LOST, F.PARTITION_LOST, F.CONTAINER_FAILED, F.INFRASTRUCTURE])
def test_infrastructure_failures_are_retried_by_default_up_to_the_limit(failure):
    assert retried(Outcome.failed(failure), attempt=1) and retried(Outcome.failed(failure), attempt=2)
    assert not retried(Outcome.failed(failure), attempt=3)
    assert not retried(Outcome.failed(failure, retry=False))  # it may have run: not again


@pytest.mark.parametrize("failure", [F.TIMEOUT, F.QUEUE_TIMEOUT, F.INTERNAL])
def test_timeouts_and_bugs_are_never_retried(failure):
    assert not retried(Outcome.failed(failure), retries=5)


def test_the_jobs_own_exception_only_with_retry_exceptions():
    assert not retried(Outcome.failed(F.USER_EXCEPTION), retries=3)
    assert retried(Outcome.failed(F.USER_EXCEPTION), retries=3, exceptions=True)


def test_a_job_lost_in_a_restart_runs_again_only_if_it_asked_for_retries():
    assert not retried(Outcome.failed(F.LOST), default=5)
    assert retried(Outcome.failed(F.LOST), retries=1)


def test_completed_and_cancelled_jobs_are_done():
    assert not retried(COMPLETED, retries=5) and not retried(Outcome.cancelled("cancelled"), retries=5)
    assert Outcome.cancelled("x").state is JobState.CANCELLED
