"""k8s/components/monitoring: the optional component renders on top of an overlay, its monitors point at the
server's and worker's `metrics` ports, `promtool check rules` accepts its alert rules, and every series its
dashboard and rules query is one a live server really exports (scraped from /metrics)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api.scrape import free_port, scrape
from tests.deploy.conftest import K8S, Manifest, render
from tests.services import service_missing
from tests.serving import server_settings
from tt_server.app import Application

COMPONENT = K8S / "components" / "monitoring"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Series Prometheus makes itself, not the server.
PROMETHEUS_SERIES = {"up"}
# Metric names in PromQL: identifiers that are not followed by "(" (functions) and not label names or keywords.
_IDENTIFIER = re.compile(r"(?<![\w$.{\"'])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_NOT_METRICS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "le",
    "model",
    "version",
    "status",
    "pod",
    "namespace",
    "method",
    "code",
    "queue",
    "reason",
    "state",
    "outcome",
    "job",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers, strings, durations and grouping labels removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # dashboard variables
    return {name for name in _IDENTIFIER.findall(expr) if name not in _NOT_METRICS and not name[0].isdigit()}


def test_metric_names_parser() -> None:
    assert metric_names('sum by (model, le) (rate(tt_a_bucket{model=~"$model"}[5m])) / on (pod) tt_b > 0.5') == {
        "tt_a_bucket",
        "tt_b",
    }
    assert metric_names('up{job="tt-server"} == 0 or tt_server_ready == 0') == {"up", "tt_server_ready"}
    assert metric_names("max(x offset 30m)") == {"x"}


@pytest.fixture(scope="module")
def with_monitoring(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    """The prod overlay with the component added, as an operator would add it to their overlay."""
    here = tmp_path_factory.mktemp("monitoring-overlay")
    (here / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "prod", here)],
                "components": [os.path.relpath(COMPONENT, here)],
            }
        )
    )
    return render(kubectl, here)


def _one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_component_is_optional(rendered: dict[str, list[Manifest]]) -> None:
    for name, docs in rendered.items():
        assert not [d for d in docs if d["kind"] in MONITORING_KINDS], name


def test_monitors_point_at_the_metrics_ports(with_monitoring: list[Manifest]) -> None:
    docs = with_monitoring
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS or doc["metadata"]["name"] == "tt-grafana-dashboard":
            assert doc["metadata"].get("namespace") == "tensortrigger", doc["metadata"]["name"]

    monitor = _one(docs, "ServiceMonitor", "tt-server")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in docs if d["kind"] == "Service" and wanted.items() <= d["metadata"].get("labels", {}).items()]
    scraped = [s for s in services if any(p.get("name") == "metrics" for p in s["spec"]["ports"])]
    assert [s["metadata"]["name"] for s in scraped] == ["tt-server"]  # the job label the rules use
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    server = _one(docs, "Deployment", "tt-server")
    env = _env(docs, server)
    assert env["TT_METRICS_ADDRESS"].endswith(":9090")
    containers = server["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for c in containers for p in c["ports"]}
    assert ports["metrics"] == 9090

    pod_monitor = _one(docs, "PodMonitor", "tt-worker")
    worker = _one(docs, "Deployment", "tt-worker")
    template_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    worker_ports = [p["name"] for c in worker["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in worker_ports

    dashboard = _one(docs, "ConfigMap", "tt-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["tensortrigger-dashboard.json"])["uid"] == "tensortrigger"


def _env(docs: list[Manifest], workload: Manifest) -> dict[str, str]:
    env: dict[str, str] = {}
    for container in workload["spec"]["template"]["spec"]["containers"]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env |= _one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
    return env


def _rules() -> dict[str, Any]:
    return dict(yaml.safe_load((COMPONENT / "alerts.yaml").read_text())["spec"])


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool is not installed; install it with: make tools (Debian's prometheus package)")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(_rules()))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in _rules()["groups"] for r in g["rules"]}
    # What the issue asks the rules to cover.
    assert {
        "TensorTriggerModelErrorRatioHigh",
        "TensorTriggerModelLatencyP99High",
        "TensorTriggerBatcherQueueSaturated",
        "TensorTriggerModelLoadFailures",
        "TensorTriggerJobDeadLettersGrowing",
        "TensorTriggerReplicaNotReady",
    } <= alerts


def test_alerts_fire_on_their_series(tmp_path: Path) -> None:
    """promtool's rule unit tests (tests/deploy/alerts_test.yaml): synthetic series in, the alerts expected out."""
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool is not installed; install it with: make tools (Debian's prometheus package)")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules()))
    shutil.copy(Path(__file__).parent / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((COMPONENT / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    return exprs


def exported_names(text: str) -> set[str]:
    """Every sample name a scrape can have: also the families that have no sample yet (a labelled metric
    whose children come with traffic), from their HELP/TYPE."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


async def test_queries_name_only_exported_series(tmp_path: Path) -> None:
    port = free_port()
    application = Application(server_settings(tmp_path, metrics_address=f"127.0.0.1:{port}"))
    await application.start()
    try:
        exported = exported_names((await scrape(port)).text) | PROMETHEUS_SERIES
    finally:
        await application.stop(grace=1.0)
    assert "tt_model_requests_total" in exported
    queried: dict[str, set[str]] = {}
    for expr in _dashboard_exprs() + [r["expr"] for g in _rules()["groups"] for r in g["rules"]]:
        for name in metric_names(expr):
            queried.setdefault(name, set()).add(expr)
    assert len(queried) >= 20
    unknown = {name: sorted(exprs)[0] for name, exprs in queried.items() if name not in exported}
    assert not unknown, f"queried but not exported: {unknown}"
