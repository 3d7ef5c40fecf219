"""deploy/prometheus: the alert rules pass ``promtool check rules`` and their unit tests (``promtool test rules``),
the example scrape configuration passes ``promtool check config``, and every metric the rules (and their tests'
input series) name is one the supervisor exports.

promtool comes from Debian's ``prometheus`` package (CI installs it: ``apt-get install -y --no-install-recommends
prometheus``). Without it these tests skip on a developer's machine, and fail where ``$CI`` is set."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cumulus.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"

ALERT_NAMES = {"CumulusSupervisorDown", "CumulusNotReady", "CumulusLeaksFound", "CumulusWorkerLost",
               "CumulusQueueStuck", "CumulusLeaseExpiries", "CumulusInfrastructureFailures", "CumulusAsyncioErrors"}
METRIC_NAME = re.compile(r"\b(?:cumulus|process|python)_[a-z0-9_]*[a-z0-9]")

# What Prometheus's text format adds to a family's name, by the family's type.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",), "unknown": ("",)}


def exported_names(metrics: Metrics) -> set[str]:
    """Every series name ``metrics`` can export, whether or not a label set has been used yet (a labelled metric has
    no samples until then): each family's name with the suffixes of its type, and the samples there are."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed, and CI must run it: "
                        "apt-get install -y --no-install-recommends prometheus")
        pytest.skip("promtool is not installed (Debian: apt-get install -y --no-install-recommends prometheus)")
    return found


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_rules(path: Path = ALERTS) -> dict[str, dict]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def metric_names_in(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


# ---- promtool ---------------------------------------------------------------------------------------------------

def test_promtool_checks_the_rules():
    result = run_promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests():
    result = run_promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_example_scrape_config_is_valid(tmp_path):
    # A copy whose ca_file exists (newer promtools check that it does), next to a copy of the rules it loads.
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked by promtool beyond its existence\n")
    config = yaml.safe_load(CONFIG.read_text())
    config["scrape_configs"][0]["tls_config"]["ca_file"] = str(ca)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    result = run_promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout and f"{len(ALERT_NAMES)} rules found" in result.stdout


def test_a_broken_rule_fails_its_unit_tests(tmp_path):
    """The unit tests test something: with the queue alert's "no job got capacity" guard gone, a case that must
    not fire fires, and with the leaks alert's new-series branch gone, a case that must fire does not."""
    text = ALERTS.read_text()
    no_guard = text.replace('increase(cumulus_job_phase_seconds_count{phase="queue"}[30m]) > 0\n            or ', "", 1)
    no_new_series = text.replace("cumulus_leaks_found_total > 0 unless", "cumulus_leaks_found_total < 0 unless", 1)
    for mutated, failing in ((no_guard, "a long wait on a busy cluster where jobs keep getting capacity"),
                             (no_new_series, "leaks fire when the counter grows")):
        assert mutated != text
        (tmp_path / "alerts.yml").write_text(mutated)
        shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
        result = run_promtool("test", "rules", tmp_path / "alerts_test.yml")
        assert result.returncode != 0, failing
        assert failing in result.stdout + result.stderr


# ---- the rules' content -----------------------------------------------------------------------------------------

def test_every_alert_is_there_with_severity_and_annotations():
    rules = alert_rules()
    assert set(rules) == ALERT_NAMES
    for name, rule in rules.items():
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert "{{" in rule["annotations"]["description"], name  # it says where, and how much
    assert 'up{job="cumulus"}' in rules["CumulusSupervisorDown"]["expr"]
    assert 'absent(up{job="cumulus"})' in rules["CumulusSupervisorDown"]["expr"]


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fires.add(check["alertname"])
                for alert in check["exp_alerts"]:
                    assert alert["exp_labels"]["severity"] in ("page", "ticket")
                    assert set(alert["exp_annotations"]) == {"summary", "description"}
            else:
                silent.add(check["alertname"])
    assert fires == ALERT_NAMES
    assert silent == ALERT_NAMES


def test_the_scrape_config_is_the_one_the_rules_expect():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "cumulus" and job["scheme"] == "https" and job["tls_config"]["ca_file"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:50052"]}]


# ---- metric names -----------------------------------------------------------------------------------------------

def test_exported_names_cover_labelled_metrics_before_any_sample():
    names = exported_names(Metrics())
    assert {"cumulus_leaks_found_total", "cumulus_job_phase_seconds_count", "cumulus_job_phase_seconds_bucket",
            "cumulus_workers", "cumulus_ready", "process_cpu_seconds_total"} <= names
    assert "cumulus_leaks_found" not in names  # a counter is only ever exported with _total (or _created)
    assert "cumulus_workers_total" not in names


def test_every_metric_the_rules_name_is_exported():
    names = exported_names(Metrics())
    rules = alert_rules()
    used = set().union(*(metric_names_in(rule["expr"]) for rule in rules.values()))
    assert {"cumulus_leaks_found_total", "cumulus_workers", "cumulus_queue_oldest_seconds"} <= used
    assert used <= names, f"not exported: {sorted(used - names)}"
    # The annotations' pointers, and the unit tests' input series (a test fed a misspelt series proves nothing).
    mentioned = set().union(*(metric_names_in(text) for rule in rules.values()
                              for text in rule["annotations"].values()))
    families = {family.name for family in Metrics().registry.collect()}  # "see cumulus_ssh_command_seconds"
    assert mentioned - names - families == set(), \
        f"annotations name metrics that do not exist: {sorted(mentioned - names - families)}"
    series = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", input["series"]).group()
              for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for input in case["input_series"]}
    assert {"up", "cumulus_leases_expired_total", "cumulus_job_phase_seconds_count"} <= series
    series.discard("up")  # Prometheus's own
    assert series - names == set(), f"alerts_test.yml feeds series that do not exist: {sorted(series - names)}"


def test_the_name_check_catches_a_bogus_metric():
    names = exported_names(Metrics())
    bogus = ALERTS.read_text().replace("cumulus_leaks_found_total", "cumulus_leaks_fund_total", 1)
    used = set().union(*(metric_names_in(rule["expr"]) for rule in yaml.safe_load(bogus)["groups"][0]["rules"]))
    assert used - names == {"cumulus_leaks_fund_total"}
    # A counter's family name without _total is no series either.
    assert metric_names_in("rate(cumulus_rpcs[5m])") - names == {"cumulus_rpcs"}
