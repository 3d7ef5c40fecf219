"""``cumulus usage`` against a real gRPC server backed by FakeSupervisorApi: ``-o json`` totals equal the jobs' own
started_at/finished_at x share, ``--by job`` has a line per job, ``--since 7d`` leaves older attempts out, the table
has a TOTAL line, the cost and what is not a GPU, and a bad ``--since`` is a usage error that says what to give."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from cumulus.cli import main
from cumulus.client.client import CumulusClient
from cumulus.errors import InvalidRequest
from cumulus.usage import UsageRecord
from tests.fakes.fake_api import running_fake_server

MODEL = "Fake GPU 80GB"  # the fake workers' devices
DAY = 86400.0


@pytest.fixture(scope="module")
def server():
    with running_fake_server(usage_prices={MODEL: 2.0}, usage_currency="EUR") as srv:
        now = time.time()
        srv.api.usage_records.extend([  # what the journal would hold besides the jobs the tests run
            UsageRecord("old-job", 1, "alice", "fake-w1", MODEL, True, 1.0, 1, now - 30 * DAY - 60, now - 30 * DAY,
                        now - 30 * DAY + 3600),
            UsageRecord("cpu-job", 1, "bob", "fake-w2", "some CPU", False, 0.5, 1, now - 3 * DAY - 5, now - 3 * DAY,
                        now - 3 * DAY + 7200),
        ])
        yield srv


@pytest.fixture(scope="module")
def jobs(server, tmp_path_factory):
    """Two jobs run through the CLI (shares 0.25 and 0.5), with their status as `cumulus status -o json` says."""
    path = tmp_path_factory.mktemp("usage-jobs") / "usagejob.py"
    path.write_text(textwrap.dedent("""
        import time

        def work(seconds):
            time.sleep(seconds)
            return seconds
    """))
    infos = []
    for gpu in ("0.25", "0.5"):
        assert main(["submit", f"{path}:work", "--arg", "0.3", "--gpu", gpu, "--address", server.address]) == 0
    with CumulusClient(server.address, log_to_driver=False) as client:
        infos = [job for job in client.list_jobs() if job.state == "COMPLETED"]
    assert len(infos) == 2
    return infos


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def own_device_seconds(info) -> float:
    return (info.finished_at - info.started_at) * info.gpu


def test_json_totals_match_the_jobs_own_times_and_shares(server, jobs, capsys):
    code, out, err = run(capsys, "usage", "-o", "json", "--address", server.address)
    assert code == 0, err
    report = json.loads(out)
    assert report["by"] == "user" and report["currency"] == "EUR" and report["since"] is None
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == {"", "alice", "bob"}  # "" is the owner of jobs submitted without a token's name
    assert rows[""]["device_seconds"] == pytest.approx(sum(own_device_seconds(j) for j in jobs), abs=1e-5)
    assert rows[""]["gpu_seconds"] == rows[""]["device_seconds"]
    total = report["total"]
    assert total["device_seconds"] == pytest.approx(sum(row["device_seconds"] for row in report["rows"]))
    assert total["device_seconds"] == pytest.approx(sum(own_device_seconds(j) for j in jobs) + 3600 + 3600, abs=1e-5)
    assert total["gpu_seconds"] == pytest.approx(total["device_seconds"] - 3600)  # bob's ran on a CPU device
    assert total["cost"] == pytest.approx((total["device_seconds"] - 3600) / 3600 * 2.0)
    assert total["unpriced_device_seconds"] == pytest.approx(3600)  # "some CPU" has no price
    assert (total["jobs"], total["attempts"]) == (4, 4)


def test_by_job_has_a_line_per_job_with_its_own_numbers(server, jobs, capsys):
    code, out, err = run(capsys, "usage", "--by", "job", "--json", "--address", server.address)
    assert code == 0, err
    rows = {row["key"]: row for row in json.loads(out)["rows"]}
    for job in jobs:
        row = rows[job.job_id]
        assert row["device_seconds"] == pytest.approx(own_device_seconds(job), abs=1e-5)
        assert row["wall_seconds"] == pytest.approx(job.finished_at - job.started_at, abs=1e-5)
        assert row["queue_seconds"] == pytest.approx(job.started_at - job.submitted_at, abs=1e-5)
        assert (row["jobs"], row["attempts"]) == (1, 1)
    assert {"old-job", "cpu-job"} <= set(rows)


def test_since_leaves_out_attempts_that_ended_before_it(server, jobs, capsys):
    code, out, err = run(capsys, "usage", "--since", "7d", "--by", "job", "-o", "json", "--address", server.address)
    assert code == 0, err
    report = json.loads(out)
    assert set(row["key"] for row in report["rows"]) == {j.job_id for j in jobs} | {"cpu-job"}
    assert report["since"] == pytest.approx(time.time() - 7 * DAY, abs=60)
    code, out, _ = run(capsys, "usage", "--since", "1d", "-o", "json", "--address", server.address)
    assert [row["key"] for row in json.loads(out)["rows"]] == [""]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 40 * DAY))
    code, out, _ = run(capsys, "usage", "--since", iso, "-o", "json", "--address", server.address)
    assert code == 0 and json.loads(out)["total"]["attempts"] == 4


def test_the_table_has_a_total_line_the_cost_and_what_is_not_a_gpu(server, jobs, capsys):
    code, out, err = run(capsys, "usage", "--address", server.address)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "usage of all attempts the supervisor keeps, by user:"
    assert lines[1].split() == ["USER", "JOBS", "ATTEMPTS", "DEVICE-HOURS", "GPU-HOURS", "WALL", "QUEUE", "COST"]
    body = {line.split()[0]: line.split() for line in lines[2:6]}
    assert set(body) == {"(none)", "alice", "bob", "TOTAL"}
    assert body["alice"][1:5] == ["1", "1", "1.00", "1.00"] and body["alice"][-2:] == ["2.00", "EUR"]
    assert body["bob"][3:5] == ["1.00", "0"] and body["bob"][-1] == "-"  # a CPU device, and no price for it
    assert body["TOTAL"][1:3] == ["4", "4"]
    assert "device-hours on devices that are not GPUs (e.g. CPU devices): 1.00 of the" in out and "COST leaves out 1.00 device-hours" in out
    code, out, _ = run(capsys, "usage", "--by", "worker", "--since", "1h", "--address", server.address)
    assert code == 0 and out.splitlines()[1].startswith("WORKER") and "fake-w1" in out


def test_a_bad_since_or_by_is_a_usage_error_that_says_what_to_give(server, capsys):
    code, out, err = run(capsys, "usage", "--since", "last tuesday", "--address", server.address)
    assert code == 2 and out == ""
    assert "--since" in err and "duration" in err and "7d" in err and "ISO date" in err
    code, _, err = run(capsys, "usage", "--since", "2999-01-01", "--address", server.address)
    assert code == 2 and "in the future" in err
    code, _, err = run(capsys, "usage", "--by", "team", "--address", server.address)
    assert code == 2 and "invalid choice" in err
    with CumulusClient(server.address, log_to_driver=False) as client:
        with pytest.raises(InvalidRequest, match="user, job, worker"):
            client.usage(by="team")
        with pytest.raises(InvalidRequest, match="duration"):
            client.usage(since="soon")
        assert client.usage(since="7d", by="worker").total.attempts >= 1


def test_through_the_rpc_a_user_sees_their_own_usage_an_admin_everyones(tmp_path):
    """GetUsage acts for the caller of the call's token (the same fake API, served with a user token too)."""
    import trio

    from cumulus.config import load_settings
    from cumulus.identity import Caller
    from cumulus.rpc.server import serve_grpc
    from tests.credentials import FixedCredentials, security_overrides
    from tests.fakes.fake_api import FakeSupervisorApi, free_port
    from tests.trio_thread import serving_in_thread

    settings = load_settings(environ={}, overrides={"grpc.listen": f"127.0.0.1:{free_port()}",
                                                    **security_overrides()})
    credentials = FixedCredentials({"alice-secret": Caller("alice")})

    async def serve(ready):
        async with trio.open_nursery() as nursery:
            api = FakeSupervisorApi(settings, nursery, tmp_path)
            api.usage_records.extend(UsageRecord(f"{owner}-job", 1, owner, "fake-w1", MODEL, True, 0.5, 1, 0.0, 1.0,
                                                 3601.0) for owner in ("alice", "bob"))
            ready(await nursery.start(lambda task_status: serve_grpc(
                api, settings.grpc.listen, security=settings.security, credentials=credentials,
                max_message_bytes=1 << 20, task_status=task_status)))

    with serving_in_thread(serve, name="usage-rpc") as address:
        with CumulusClient(address, log_to_driver=False, token="alice-secret") as alice:
            assert [row.key for row in alice.usage(by="job").rows] == ["alice-job"]
            assert alice.usage().total.device_hours == pytest.approx(0.5)
        with CumulusClient(address, log_to_driver=False) as admin:  # the run's admin token
            assert {row.key for row in admin.usage().rows} == {"alice", "bob"}


def test_usage_is_a_completed_command(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "usage" in script and "--since" in script and "worker" in script
