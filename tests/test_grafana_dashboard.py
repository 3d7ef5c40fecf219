"""deploy/grafana/cumulus.json: a Grafana dashboard with the expected structure, whose every query names metrics
that a live supervisor exports. The supervisor is the real one on the in-memory fakes, serving real gRPC and its
HTTP port (TLS) (tests/test_metrics.py's ``supervisor_with_http``); one job goes through it first, so that the
labelled metrics have samples. The queries also parse as PromQL (``promtool check rules`` on a rule file made of
them), where promtool is installed (see tests/test_deploy_rules.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cumulus.client.client import CumulusClient
from tests.test_deploy_rules import run_promtool
from tests.test_metrics import finished, get, supervisor_with_http

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "cumulus.json"

# Series Prometheus makes itself for every target; no /metrics has them.
PROMETHEUS_OWN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "info": ("_info",)}  # otherwise: the family's own name

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                "bool", "inf", "nan", "atan2"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def work(x: int) -> int:
    return x * 2


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers once strings, label matchers, ranges,
    grouping clauses, function calls, keywords and Grafana's variables are taken out."""
    text = re.sub(r"\$\{?\w+\}?", "x", expr)  # $__rate_interval, $job: only ever inside [] or strings
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    return {name for name in IDENTIFIER.findall(text) if name.lower() not in PROMQL_WORDS}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves not."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every query: the panels' targets and the template variables' label_values(...)."""
    found = [(panel["title"], target["expr"]) for panel in panels(board) for target in panel["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"${variable['name']}: {query}"
            found.append((f"${variable['name']}", match.group(1)))
    return found


def exported(text: str) -> set[str]:
    """The series names a /metrics text exports: its families (from HELP/TYPE lines: a labelled metric no label set
    was used of has no sample yet) with the suffixes of their type, and every sample's name."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def missing(used: set[str], names: set[str]) -> set[str]:
    """The names in ``used`` that are not exported (a histogram's _bucket/_sum/_count count when its base is)."""
    histograms = {name[: -len("_bucket")] for name in names if name.endswith("_bucket")}

    def known(name: str) -> bool:
        if name in names or name in PROMETHEUS_OWN:
            return True
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        return base is not None and base in histograms

    return {name for name in used if not known(name)}


@pytest.fixture(scope="module")
def live_metrics() -> Iterator[str]:
    with supervisor_with_http() as served:
        with CumulusClient(served.address, log_to_driver=False) as client:
            ref = client.submit(work, 1, env={"FAKE_RUNTIME": "0.1"}, log_to_driver=False)
            assert finished(ref) == "COMPLETED"
        status, text = get(served.http + "/metrics")
        assert status == 200
        yield text


# ---- structure --------------------------------------------------------------------------------------------------

def test_the_dashboard_has_the_expected_structure():
    board = dashboard()
    assert board["uid"] == "cumulus" and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)

    ids = [panel["id"] for panel in board["panels"]] + \
          [inner["id"] for panel in board["panels"] for inner in panel.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        where = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
            # every selector follows the dashboard's variables
            for selector in re.findall(r"\{[^}]*\}", target["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (where, selector)
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where


def test_the_dashboard_answers_the_operators_questions():
    used = set().union(*(metric_names(expr) for _, expr in expressions(dashboard())))
    assert {"cumulus_jobs_submitted_total", "cumulus_jobs_finished_total", "cumulus_jobs", "cumulus_queue_length",
            "cumulus_queue_oldest_seconds", "cumulus_job_phase_seconds_bucket", "cumulus_device_share_used",
            "cumulus_device_share_total", "cumulus_workers", "cumulus_leases_renewed_total",
            "cumulus_leases_expired_total", "cumulus_leaks_found_total", "cumulus_ssh_command_seconds_bucket",
            "cumulus_docker_api_seconds_bucket", "cumulus_rpcs_total", "cumulus_asyncio_unhandled_errors_total",
            "cumulus_device_seconds_total", "process_cpu_seconds_total", "process_resident_memory_bytes"} <= used
    quantiles = [expr for _, expr in expressions(dashboard()) if "cumulus_job_phase_seconds_bucket" in expr]
    assert any("histogram_quantile(0.5," in e for e in quantiles) and any("histogram_quantile(0.95," in e
                                                                          for e in quantiles)
    assert all("by (le, phase)" in e for e in quantiles)


def test_metric_names_are_read_out_of_promql():
    assert metric_names('histogram_quantile(0.95, sum by (le, phase) (rate(cumulus_job_phase_seconds_bucket'
                        '{job=~"$job", phase!="run"}[$__rate_interval])))') == {"cumulus_job_phase_seconds_bucket"}
    assert metric_names("sum(a_total{x=\"y\"}) / (sum without (z) (b) > 0) and on (job) c offset 5m") == \
        {"a_total", "b", "c"}
    assert metric_names("rate(process_cpu_seconds_total[5m]) * 1e3 + 0.5") == {"process_cpu_seconds_total"}


# ---- against a live supervisor ----------------------------------------------------------------------------------

def test_every_query_names_metrics_a_live_supervisor_exports(live_metrics):
    names = exported(live_metrics)
    assert "cumulus_jobs_submitted_total" in names and "cumulus_leases_expired_total" in names
    unknown = {(where, name) for where, expr in expressions(dashboard())
               for name in missing(metric_names(expr), names)}
    assert not unknown, f"the dashboard names metrics /metrics does not have: {sorted(unknown)}"


def test_the_check_catches_a_metric_that_does_not_exist(live_metrics):
    names = exported(live_metrics)
    assert missing({"cumulus_jobs_submited_total", "cumulus_jobs_submitted_total"}, names) == \
        {"cumulus_jobs_submited_total"}
    assert missing({"cumulus_rpcs", "cumulus_queue_length_bucket", "cumulus_rpc_seconds_bucket"}, names) == \
        {"cumulus_rpcs", "cumulus_queue_length_bucket"}  # a counter without _total; a gauge is no histogram
    board = dashboard()
    board["panels"][-1]["targets"][0]["expr"] = "rate(cumulus_gpu_seconds_total[5m])"
    used = set().union(*(metric_names(expr) for _, expr in expressions(board)))
    assert missing(used, names) == {"cumulus_gpu_seconds_total"}


def test_every_query_parses_as_promql(tmp_path):
    """Each query, Grafana's variables replaced by values, as a recording rule: promtool parses it."""
    def plain(expr: str) -> str:
        expr = expr.replace("$__rate_interval", "5m").replace("$__range", "6h").replace("$__interval", "1m")
        return re.sub(r"\$\{?\w+\}?", ".*", expr)

    rules = [{"record": f"dashboard:query_{i}", "expr": plain(expr)}
             for i, (_, expr) in enumerate(expressions(dashboard()))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout

    rules[0]["expr"] = "sum by (le (rate(cumulus_rpcs_total[5m]))"  # and a broken one is refused
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert run_promtool("check", "rules", path).returncode != 0
