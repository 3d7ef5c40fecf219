"""Trace ids (issue 14, item 5): the W3C traceparent parser and maker (cumulus/tracing.py), how the SDK picks the
traceparent of a submission, and where the trace id travels on the server side (the job's spec from a submission,
its journal row, the idempotency fingerprint, its status on the wire and in ``cumulus describe``)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cumulus.client.client import _submission_traceparent
from cumulus.errors import InvalidRequest
from cumulus.tracing import (TRACEPARENT_ENV, TraceParent, child_traceparent, is_trace_id, new_trace_id,
                             new_traceparent, parse_traceparent, trace_id_from)

W3C_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the spec's own example
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HEADER = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


# ---- parsing -------------------------------------------------------------------------------------------------------


def test_the_specs_example_parses():
    parsed = parse_traceparent(W3C_EXAMPLE)
    assert parsed == TraceParent(TRACE, "00f067aa0ba902b7", 1)
    assert parsed.sampled and parsed.header() == W3C_EXAMPLE
    assert parse_traceparent(W3C_EXAMPLE.encode()) == parsed  # gRPC may hand over bytes
    assert parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").sampled is False


@pytest.mark.parametrize("value, why", [
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "all-zero trace id"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "all-zero parent id"),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "upper-case hex"),
    ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "trace id one digit short"),
    ("00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01", "trace id one digit long"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", "parent id short"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", "flags one digit"),
    ("0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version one digit"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "version 00 with more fields"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", "non-hex flags"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01", "non-hex parent id"),
    ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "wrong separators"),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "later version, junk after the flags"),
    ("", "empty"),
    (None, "absent"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "-" * 600, "too long"),
    (b"\xff\xfe", "not ASCII"),
])
def test_invalid_traceparents_are_ignored_not_raised(value, why):
    assert parse_traceparent(value) is None, why


def test_a_later_version_is_read_as_version_00_and_its_extra_fields_ignored():
    parsed = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-brings")
    assert parsed is not None and parsed.trace_id == TRACE
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") is not None


# ---- making ----------------------------------------------------------------------------------------------------------


def test_new_traceparents_are_valid_sampled_and_distinct():
    made = [new_traceparent() for _ in range(50)]
    for tp in made:
        assert HEADER.fullmatch(tp.header()) and tp.sampled
        assert parse_traceparent(tp.header()) == tp
    assert len({tp.trace_id for tp in made}) == 50 and len({tp.parent_id for tp in made}) == 50


def test_a_child_keeps_the_trace_and_flags_with_a_new_span():
    parent = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    child = child_traceparent(parent)
    assert (child.trace_id, child.flags) == (TRACE, 0) and child.parent_id != parent.parent_id


def test_trace_id_from_keeps_a_valid_one_and_makes_a_new_one_otherwise():
    assert trace_id_from(W3C_EXAMPLE) == TRACE
    fresh = {trace_id_from(bad) for bad in (None, "", "garbage", "ff" + W3C_EXAMPLE[2:])}
    assert len(fresh) == 4 and all(is_trace_id(t) for t in fresh) and TRACE not in fresh
    assert is_trace_id(new_trace_id()) and not is_trace_id("0" * 32) and not is_trace_id(TRACE.upper())


@given(trace=st.binary(min_size=16, max_size=16), span=st.binary(min_size=8, max_size=8),
       flags=st.integers(0, 255))
def test_property_every_well_formed_traceparent_parses_back(trace, span, flags):
    tp = TraceParent(trace.hex(), span.hex(), flags)
    parsed = parse_traceparent(tp.header())
    if trace == bytes(16) or span == bytes(8):
        assert parsed is None
    else:
        assert parsed == tp


@given(st.one_of(st.text(max_size=700), st.binary(max_size=700),
                 st.from_regex(r"[0-9a-fA-F]{1,3}-[0-9a-f]{30,34}-[0-9a-f]{14,18}-[0-9a-fA-F]{1,3}.{0,5}",
                               fullmatch=True)))
def test_property_the_parser_never_raises_and_only_returns_valid_ids(value):
    parsed = parse_traceparent(value)
    if parsed is not None:
        assert is_trace_id(parsed.trace_id) and re.fullmatch("[0-9a-f]{16}", parsed.parent_id)
        assert parsed.parent_id != "0" * 16 and 0 <= parsed.flags <= 255


# ---- the SDK's traceparent per submission ----------------------------------------------------------------------------


def test_the_sdk_makes_a_new_trace_per_submission(monkeypatch):
    monkeypatch.delenv(TRACEPARENT_ENV, raising=False)
    first, second = _submission_traceparent(None), _submission_traceparent(None)
    assert first.trace_id != second.trace_id and HEADER.fullmatch(first.header())


def test_the_sdk_continues_a_given_trace_or_the_environments(monkeypatch):
    monkeypatch.setenv(TRACEPARENT_ENV, "00-11111111111111111111111111111111-2222222222222222-01")
    given_tp = _submission_traceparent(W3C_EXAMPLE)
    assert given_tp.trace_id == TRACE and given_tp.parent_id != "00f067aa0ba902b7"  # our span, its child
    assert _submission_traceparent(None).trace_id == "1" * 32
    monkeypatch.setenv(TRACEPARENT_ENV, "not a traceparent")  # ignored, like a receiver would
    assert _submission_traceparent(None).trace_id != "1" * 32


def test_an_invalid_traceparent_given_to_the_sdk_is_refused_at_the_call_site():
    with pytest.raises(InvalidRequest, match="not a W3C traceparent"):
        _submission_traceparent("00-abc-def-01")


# ---- the server side: spec, journal row, idempotency, wire, describe ------------------------------------------------


def test_the_trace_id_is_in_the_spec_the_journal_row_and_the_status():
    from cumulus.identity import Limits
    from cumulus.jobs import JobRecord, JobSpec, JobState
    from cumulus.journal_rows import record_of, row_of
    from cumulus.rpc import convert

    spec = JobSpec(package=b"zip", owner="alice", limits=Limits(), trace_id=TRACE)
    record = JobRecord("j1", spec)
    restored = record_of(row_of(record, with_package=True))  # what a restarted supervisor reads back
    assert restored.spec.trace_id == TRACE
    assert convert.status_to_pb(restored).trace_id == TRACE
    record.set_state(JobState.COMPLETED)
    assert record_of(row_of(record, with_package=True)).spec.trace_id == TRACE
    # A row written before trace ids existed reads back without one.
    row = row_of(JobRecord("j2", JobSpec(package=b"zip")), with_package=True)
    row["spec"] = row["spec"].replace(', "trace_id": ""', "")
    assert "trace_id" not in row["spec"] and record_of(row).spec.trace_id == ""


def test_a_resubmission_with_a_new_trace_id_is_the_same_request():
    from cumulus.idempotency import RequestFingerprint
    from cumulus.jobs import JobSpec

    first = RequestFingerprint.of(JobSpec(package=b"zip", idempotency_key="k", trace_id=TRACE))
    again = RequestFingerprint.of(JobSpec(package=b"zip", idempotency_key="k", trace_id=new_trace_id()))
    assert first.differences(again) == []


def test_spec_from_submission_records_the_servicers_trace_id():
    from cumulus.client import packaging
    from cumulus.config import load_settings
    from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
    from cumulus.rpc.submission import spec_from_submission

    request = pb.JobSubmission(code_package=packaging.build_package(len, ((1, 2),), {}), gpu=0.5)
    settings = load_settings(environ={})
    assert spec_from_submission(request, settings, trace_id=TRACE).trace_id == TRACE


def test_status_and_describe_show_the_trace_id():
    from cumulus.client import cli_output as out
    from cumulus.client.types import JobDescription, JobInfo
    from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

    info = JobInfo.from_pb(pb.JobStatus(job_id="j1", state=pb.COMPLETED, trace_id=TRACE))
    assert info.trace_id == TRACE and info.to_dict()["trace_id"] == TRACE  # `-o json` too
    text = out.describe_text(JobDescription(info, []))
    assert re.search(rf"^Trace id:\s+{TRACE}$", text, re.MULTILINE), text
    assert "Trace id" not in out.describe_text(JobDescription(JobInfo("j2", "QUEUED"), []))
