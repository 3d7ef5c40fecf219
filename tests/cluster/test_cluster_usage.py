"""Usage on the real local cluster, through a REAL ``cumulus supervisor`` process with a price for the cluster's
device model: three jobs with shares 0.25, 0.5 and 1.0 run to their end, then ``cumulus usage --by job -o json``
has one line per job whose device time is that job's own ``finished_at - started_at`` (its JobStatus) x share, the
totals are their sums, the cost is device-hours x the price, and none of it is GPU time (the local cluster's
devices are PoCL CPU devices, which the table says). Nothing of the jobs is left afterwards."""

from __future__ import annotations

import json

import pytest

from supervisor_process import start_supervisor

pytestmark = pytest.mark.cluster

SHARES = (0.25, 0.5, 1.0)
PRICE = 1.5  # EUR per device-hour of the cluster's device model
JOB_TIMEOUT = 180.0


def busy_for_a_moment(seconds):
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def priced_supervisor(cluster, tmp_path_factory):
    workers = [n for n in cluster["nodes"] if n["role"] == "worker"]
    model = workers[0]["inventory"]["devices"][0]["name"]
    extra = f"usage:\n  prices:\n    {json.dumps(model)}: {PRICE}\n  currency: \"EUR\"\n"
    sup = start_supervisor(tmp_path_factory.mktemp("usage-supervisor"), [n["hostname"] for n in workers],
                           extra=extra)
    try:
        yield sup
    finally:
        code = sup.stop()
    assert code == 0, sup.log_tail()


def test_usage_by_job_is_each_jobs_own_run_time_times_its_share(priced_supervisor):
    sup = priced_supervisor
    with sup.client() as client:
        refs = [client.submit_call(busy_for_a_moment, (2,), gpu=share, duration=300) for share in SHARES]
        for ref in refs:
            assert ref.result(timeout=JOB_TIMEOUT) == 2
        job_ids = [ref.job_id for ref in refs]
        sup.assert_nothing_left(job_ids, expect={job_id: "COMPLETED" for job_id in job_ids})
        infos = {job_id: client.status(job_id) for job_id in job_ids}
        workers = client.list_workers()
    assert all(not device.is_gpu for worker in workers for device in worker.devices)

    res = sup.cli("usage", "--by", "job", "-o", "json", check_rc=0)
    report = json.loads(res.stdout)
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == set(job_ids), report  # a fresh supervisor: these three jobs only
    expected = {}
    for job_id, share in zip(job_ids, SHARES):
        info = infos[job_id]
        assert info.gpu == share and info.attempt == 1
        expected[job_id] = (info.finished_at - info.started_at) * share
        row = rows[job_id]
        assert row["device_seconds"] == pytest.approx(expected[job_id], abs=1e-5), (job_id, row, info)
        assert row["wall_seconds"] == pytest.approx(info.finished_at - info.started_at, abs=1e-5)
        assert row["queue_seconds"] == pytest.approx(info.started_at - info.submitted_at, abs=1e-5)
        assert row["gpu_seconds"] == 0  # PoCL CPU devices are not GPUs
        assert row["cost"] == pytest.approx(expected[job_id] / 3600 * PRICE, abs=1e-8)
        assert (row["jobs"], row["attempts"], row["unpriced_device_seconds"]) == (1, 1, 0)
    total = report["total"]
    assert total["device_seconds"] == pytest.approx(sum(expected.values()), abs=1e-5)
    assert total["cost"] == pytest.approx(sum(expected.values()) / 3600 * PRICE, abs=1e-8)
    assert (total["jobs"], total["attempts"], total["gpu_seconds"]) == (3, 3, 0)
    assert report["currency"] == "EUR"

    with sup.client() as client:  # the SDK says the same
        assert client.usage(by="job").total.device_seconds == pytest.approx(total["device_seconds"])
    table = sup.cli("usage", "--since", "1h", check_rc=0).stdout
    assert "TOTAL" in table and "EUR" in table and "not GPUs" in table, table
