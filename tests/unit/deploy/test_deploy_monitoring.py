"""Prometheus config, alert rules and the Grafana dashboard use only the metrics the service
exports (the metrics contract in README.md), with their labels; promtool checks and unit-tests the
rules where it is installed (deploy/install-tools.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
PROM = REPO / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "slimserve-dashboard.json"
PROMTOOL_CASES = Path(__file__).with_name("promtool_alert_cases.yml")

# The metrics contract (README.md) plus the in-flight and accuracy-budget gauges: name -> labels.
GAUGES = {
    "slimserve_model_accuracy": {"model", "variant", "metric"},
    "slimserve_model_speedup": {"model", "variant"},
    "slimserve_model_params": {"model", "variant"},
    "slimserve_model_macs": {"model", "variant"},
    "slimserve_active_variant": {"model", "variant", "profile"},
    "slimserve_inflight_requests": {"model"},
    "slimserve_accuracy_budget": {"model", "variant", "metric"},
    "slimserve_live_fidelity": {"model", "variant", "metric"},
    "slimserve_live_budget": {"model", "variant", "metric"},
}
COUNTERS = {
    "slimserve_inference_requests_total": {"model", "variant", "status"},
    "slimserve_swaps_total": {"model", "reason"},
    "slimserve_compression_jobs_total": {"profile", "outcome"},
    "slimserve_shadow_samples_total": {"model", "variant"},
}
HISTOGRAMS = {
    "slimserve_inference_latency_seconds": {"model", "variant", "profile"},
    "slimserve_compression_seconds": {"model", "profile"},
}
EXPORTED: dict[str, set[str]] = {**GAUGES, **COUNTERS}
for _name, _labels in HISTOGRAMS.items():
    EXPORTED[f"{_name}_bucket"] = _labels | {"le"}
    EXPORTED[f"{_name}_sum"] = _labels
    EXPORTED[f"{_name}_count"] = _labels
# Labels Prometheus (or the Prometheus Operator) adds to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"\b(slimserve_[A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """The slimserve_* metric names an expression reads (labels and strings left out)."""
    text = _GROUPING.sub(" ", expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = _STRING.sub('""', text)
    return set(re.findall(r"\bslimserve_[A-Za-z0-9_:]*", text))


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """Label names used in each slimserve_* selector's matchers."""
    out: dict[str, set[str]] = {}
    for name, body in _SELECTOR.findall(expr):
        body = _STRING.sub('""', body)
        out.setdefault(name, set()).update(m[0] for m in _MATCHER.findall(body))
    return out


def check_expr(expr: str, where: str) -> set[str]:
    names = metric_names(expr)
    unknown = names - set(EXPORTED)
    assert not unknown, f"{where}: metrics the service does not export: {sorted(unknown)}"
    for name, labels in matcher_labels(expr).items():
        extra = labels - EXPORTED[name] - TARGET_LABELS
        assert not extra, f"{where}: {name} has no label(s) {sorted(extra)}"
    return names


def test_metric_name_extraction():
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(slimserve_inference_latency_seconds_bucket{model=~"$model"}[5m])))'
        ' > on (model) group_left slimserve_model_accuracy{metric="slimserve_fake"}'
    )
    assert metric_names(expr) == {
        "slimserve_inference_latency_seconds_bucket",
        "slimserve_model_accuracy",
    }
    with pytest.raises(AssertionError, match="does not export"):
        check_expr("rate(slimserve_inference_latency_seconds[5m])", "bare histogram")
    with pytest.raises(AssertionError, match="no label"):
        check_expr('slimserve_compression_jobs_total{outcom="failed"}', "label typo")


# --- alert rules ------------------------------------------------------------------------------


def _rules() -> list[dict]:
    data = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in data["groups"] for r in g["rules"]]
    assert rules
    return rules


def test_alert_rules_shape_and_metrics():
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    used: dict[str, set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        used[rule["alert"]] = check_expr(rule["expr"], rule["alert"])

    by_expr = {r["alert"]: r["expr"] for r in rules}
    # p99 latency from the histogram's buckets.
    p99 = [a for a, e in by_expr.items() if "histogram_quantile(0.99" in e.replace(" ", "")]
    assert p99 and "slimserve_inference_latency_seconds_bucket" in used[p99[0]]
    # Active variant's accuracy against its budget.
    assert any(
        {"slimserve_model_accuracy", "slimserve_active_variant", "slimserve_accuracy_budget"} <= m
        for m in used.values()
    )
    # Failing compression jobs and rollbacks.
    assert any(
        "slimserve_compression_jobs_total" in used[a] and 'outcome=~"failed' in e
        for a, e in by_expr.items()
    )
    assert any(
        "slimserve_swaps_total" in used[a] and 'reason="rollback"' in e for a, e in by_expr.items()
    )


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (deploy/install-tools.sh installs it)")
    return exe


def _run(args: list[str], cwd: Path) -> None:
    out = subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}{out.stderr}"


def test_promtool_checks_rules_and_config(tmp_path):
    for f in ("alerts.yml", "prometheus.yml"):
        shutil.copy(PROM / f, tmp_path / f)
    _run(["check", "rules", "alerts.yml"], tmp_path)
    _run(["check", "config", "prometheus.yml"], tmp_path)


def test_promtool_alert_unit_tests(tmp_path):
    """The alerts fire on the series the service would export, and only then."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    shutil.copy(PROMTOOL_CASES, tmp_path / "cases.yml")
    _run(["test", "rules", "cases.yml"], tmp_path)
    cases = yaml.safe_load(PROMTOOL_CASES.read_text())
    tested = {t["alertname"] for case in cases["tests"] for t in case["alert_rule_test"]}
    assert {r["alert"] for r in _rules() if "slimserve_" in r["expr"]} <= tested
    for case in cases["tests"]:
        for series in case["input_series"]:
            check_expr(series["series"], "promtool case")


def test_prometheus_scrape_config():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROM / rule_file).is_file(), rule_file
    (job,) = [j for j in config["scrape_configs"] if j["job_name"].startswith("slimserve")]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for static in job["static_configs"]:
        assert all(t.endswith(":3000") for t in static["targets"])
        # A target label named like a metric label would rename it to exported_<name>.
        clash = set(static.get("labels", {})) & set().union(*EXPORTED.values())
        assert not clash, clash


def test_prometheus_adapter_rule_serves_the_hpa_metric():
    rules = yaml.safe_load((PROM / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"]
    hpa = yaml.safe_load((REPO / "k8s" / "base" / "hpa.yaml").read_text())
    wanted = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert wanted in GAUGES
    assert any(
        check_expr(r["seriesQuery"], "adapter") == {wanted} and r["name"]["as"] == wanted
        for r in rules
    )


# --- Grafana dashboard ------------------------------------------------------------------------


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def _targets(dashboard: dict) -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"])
        for p in _panels(dashboard)
        for t in p.get("targets", [])
        if "expr" in t
    ]


def test_dashboard_shape():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    for v in variables.values():
        if v["type"] == "query":
            check_expr(v["definition"], f"variable {v['name']}")


def test_dashboard_metrics_are_exported_and_covered():
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for title, expr in _targets(dashboard):
        used |= check_expr(expr, f"panel {title!r}")
    required = {
        "slimserve_inference_latency_seconds_bucket",
        "slimserve_inference_requests_total",
        "slimserve_model_accuracy",
        "slimserve_model_speedup",
        "slimserve_model_params",
        "slimserve_model_macs",
        "slimserve_active_variant",
        "slimserve_swaps_total",
        "slimserve_compression_jobs_total",
        "slimserve_compression_seconds_bucket",
    }
    assert required <= used, f"no panel shows {sorted(required - used)}"
    latency = [e for _, e in _targets(dashboard) if "latency_seconds_bucket" in e]
    assert any("0.99" in e and "variant" in e for e in latency)
    assert any("0.5" in e and "variant" in e for e in latency)


def test_dashboard_queries_parse(tmp_path):
    """Every panel query, Grafana variables filled in, is valid PromQL (promtool parses it)."""
    promtool = _promtool()
    dashboard = json.loads(DASHBOARD.read_text())
    records = []
    for i, (_, expr) in enumerate(_targets(dashboard)):
        expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        records.append({"record": f"grafana:panel_query_{i}", "expr": expr})
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    out = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
