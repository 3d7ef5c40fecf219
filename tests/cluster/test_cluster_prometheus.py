"""A real Prometheus (Debian's ``prometheus`` package) scrapes a REAL ``cumulus supervisor`` process on the local
cluster, over HTTPS with the run's CA, every second, with the project's alert rules loaded
(``deploy/prometheus/alerts.yml``). After a run of jobs - some completing, one raising, one cancelled - PromQL
queries through Prometheus's HTTP API return exactly those counts, and no leak alert is pending or firing.

Prometheus listens on loopback only, on a free port, with its data in a temporary directory; the test stops it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from supervisor_process import free_port, start_supervisor
from tests.credentials import run_credentials

REPO = Path(__file__).resolve().parents[2]
SCRAPE_SECONDS = 1
SETTLE_TIMEOUT = 60.0
COMPLETING = 3


def doubled(x):
    return 2 * x


def raises():
    raise ValueError("on purpose")


def sleeps():
    import time

    time.sleep(600)


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.fail("Debian's prometheus package is not installed (.ci/run installs it: apt-get install prometheus)")
    return found


@pytest.fixture(scope="module")
def supervisor(cluster, tmp_path_factory):
    hostnames = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    http_port = free_port()
    sup = start_supervisor(tmp_path_factory.mktemp("prom-supervisor"), hostnames,
                           http_listen=f"127.0.0.1:{http_port}")
    try:
        yield sup, http_port
    finally:
        code = sup.stop()
    assert code == 0, sup.log_tail()


@pytest.fixture(scope="module")
def prometheus(supervisor, tmp_path_factory):
    _, http_port = supervisor
    directory = tmp_path_factory.mktemp("prometheus")
    shutil.copy(REPO / "deploy" / "prometheus" / "alerts.yml", directory / "alerts.yml")
    config = directory / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{
            "job_name": "cumulus", "scheme": "https",
            "tls_config": {"ca_file": str(run_credentials().ca)},
            "static_configs": [{"targets": [f"127.0.0.1:{http_port}"]}],
        }],
    }))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    proc = subprocess.Popen([prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _ready(url):
            assert proc.poll() is None, (directory / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not become ready in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def api(url: str, path: str, **params: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(url: str, promql: str) -> float | None:
    """The single value of an instant query (None when it has no series)."""
    result = api(url, "query", query=promql)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def eventually(url: str, promql: str, expected: float) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    seen = None
    while time.monotonic() < deadline:
        seen = query(url, promql)
        if seen == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{promql} = {seen}, expected {expected} within {SETTLE_TIMEOUT:g} s")


def test_prometheus_counts_what_the_supervisor_did(supervisor, prometheus):
    sup, _ = supervisor
    eventually(prometheus, 'up{job="cumulus"}', 1)
    eventually(prometheus, "cumulus_ready", 1)
    with sup.client() as client:
        refs = [client.submit(doubled, i, gpu=0.25) for i in range(COMPLETING)]
        failing = client.submit(raises, gpu=0.25)
        assert [ref.result(timeout=120) for ref in refs] == [0, 2, 4]
        with pytest.raises(ValueError):
            failing.result(timeout=120)
        stuck = client.submit(sleeps, gpu=0.25)
        while stuck.status().state != "RUNNING":
            time.sleep(0.1)
        eventually(prometheus, 'sum(cumulus_jobs{state="RUNNING"})', 1)
        client.cancel(stuck.job_id)

    eventually(prometheus, "sum(cumulus_jobs_submitted_total)", COMPLETING + 2)
    eventually(prometheus, 'sum(cumulus_jobs_finished_total{state="COMPLETED"})', COMPLETING)
    eventually(prometheus, 'sum(cumulus_jobs_finished_total{state="FAILED",reason="user_exception"})', 1)
    eventually(prometheus, 'sum(cumulus_jobs_finished_total{state="CANCELLED"})', 1)
    eventually(prometheus, 'sum(cumulus_job_phase_seconds_count{phase="service_create"})', COMPLETING + 2)
    eventually(prometheus, 'sum(cumulus_job_phase_seconds_count{phase="teardown"})', COMPLETING + 2)
    eventually(prometheus, "sum(cumulus_device_share_used)", 0)
    eventually(prometheus, 'count(cumulus_workers{state="ready"} > 0)', 1)
    assert query(prometheus, 'sum(cumulus_rpcs_total{method="SubmitJob",code="OK"})') >= COMPLETING + 2
    assert query(prometheus, 'sum(cumulus_ssh_command_seconds_count{ok="true"})') > 0
    assert query(prometheus, "sum(cumulus_job_starts_total)") == COMPLETING + 2
    # A service is created for each cold start, and for each warm service (which a warm start then takes).
    assert query(prometheus, 'sum(cumulus_docker_api_seconds_count{call="create_service"})') == (
        query(prometheus, 'sum(cumulus_job_starts_total{path="cold"})') or 0) + query(
        prometheus, "sum(cumulus_warm_services_made_total)")
    assert query(prometheus, 'sum(cumulus_job_starts_total{path="warm"})') >= 1
    assert (query(prometheus, "sum(cumulus_leaks_found_total)") or 0) == 0


def test_the_alert_rules_load_and_stay_quiet_on_a_healthy_cluster(supervisor, prometheus):
    groups = api(prometheus, "rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert {"CumulusSupervisorDown", "CumulusLeaksFound", "CumulusWorkerLost", "CumulusQueueStuck"} <= set(rules)
    assert all(rule["health"] == "ok" for rule in rules.values()), {n: r.get("lastError") for n, r in rules.items()}
    active = [alert for alert in api(prometheus, "alerts")["alerts"]
              if alert["labels"]["alertname"] in ("CumulusSupervisorDown", "CumulusLeaksFound", "CumulusNotReady")]
    assert not active, active
