"""deploy/: the Grafana dashboard, Prometheus's config and alert rules parse, and every series they use is one
the live hub exports at /metrics (docs/observability.md). Plus the series added for the alerts."""
from __future__ import annotations

import json
import re
import uuid

import httpx
import yaml
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from apps.chat.models import GenerationRequest
from tests.conftest import make_account
from tests.support.processes import ROOT

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "aihub.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# Series PromQL may name that no exporter of ours writes: Prometheus's own.
PROMETHEUS_OWN = {"up"}
SERIES = re.compile(r"\b((?:aihub|django)_[a-z0-9_]+|up)\b(?!\s*\()")


def _exported_names(base_url: str) -> set[str]:
    """Every name a query may use: each family's samples, and its suffixed names (a counter's _total, ...)."""
    text = httpx.get(f"{base_url}/metrics", timeout=60).text
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update({"counter": [family.name + "_total"],
                      "histogram": [family.name + s for s in ("_bucket", "_sum", "_count")]}.get(family.type, []))
    return names


def _series(text: str, name: str, **labels) -> float:
    """The sum of the samples `name` whose labels include `labels` (labelless series too)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def _dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def _alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_series_of_the_dashboard_and_the_alerts_is_exported_by_the_hub(hub, openai_client, models):
    # One answered request, so that the latency histograms have buckets to show.
    openai_client.chat.completions.create(model=models["tiny"], max_tokens=1,
                                          messages=[{"role": "user", "content": "hi"}])
    exported = _exported_names(hub.base_url) | PROMETHEUS_OWN
    queries = _dashboard_queries() + [rule["expr"] for rule in _alert_rules()]
    used = {name for query in queries for name in SERIES.findall(query)}
    assert {"aihub_worker_memory_used_bytes", "aihub_queue_depth", "aihub_time_to_first_token_seconds_bucket",
            "aihub_training_progress_ratio", "aihub_queue_consumers"} <= used
    assert used - exported == set(), f"not exported by the hub: {sorted(used - exported)}"


def test_the_grafana_dashboard_has_the_admin_dashboards_panels_on_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert {p["datasource"]["uid"] for p in panels} == {uid}
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("device memory", "loaded models", "queue depth", "sequences", "requests per minute",
                   "time to first token", "error rate", "training progress"):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/aihub.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_alert_rules_cover_what_an_operator_is_woken_for():
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert {"AIHubWorkerDown", "AIHubQueueNearFull", "AIHubOutOfMemory", "AIHubTrainingFailed"} <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
    assert 'code="insufficient_memory"' in rules["AIHubOutOfMemory"]["expr"]


def test_compose_runs_prometheus_with_the_rules_and_grafana_with_the_dashboard():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["web:8000"]
    mounted = {}
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
                mounted[target] = source
    assert mounted["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert mounted["/var/lib/grafana/dashboards"] == "./deploy/grafana/dashboards"
    token_file = prometheus["scrape_configs"][0]["authorization"]["credentials_file"]
    assert token_file == "/run/secrets/" + compose["services"]["prometheus"]["secrets"][0]


def test_the_series_behind_the_alerts_say_what_they_count(hub, models):
    """Workers per queue, requests waiting against AIHUB_MAX_QUEUE, failures by error code."""
    from apps.chat.services import generation_fail, generation_settle

    model = f"alerts:{uuid.uuid4().hex[:6]}"
    owner = make_account("alerts").user
    row = GenerationRequest.objects.create(user=owner, model=model, prompt_messages=[])
    text = httpx.get(f"{hub.base_url}/metrics", timeout=60).text
    assert _series(text, "aihub_queue_consumers", queue="gpu.inference") >= 1
    assert _series(text, "aihub_queue_consumers", queue="gpu.training") >= 1
    assert _series(text, "aihub_requests_waiting_limit") == settings.AIHUB_MAX_QUEUE
    assert _series(text, "aihub_requests_waiting") >= 1  # this queued row at least
    # The sweeper's way to end a request nobody took (apps/chat/services.py), counted once by its code.
    error = {"message": "waited too long", "type": "server_error", "param": None, "code": "queue_timeout"}
    assert generation_fail(generation_id=row.id, error=error, from_states=[GenerationRequest.State.QUEUED])
    generation_settle(generation_id=row.id)
    generation_settle(generation_id=row.id)
    text = httpx.get(f"{hub.base_url}/metrics", timeout=60).text
    assert _series(text, "aihub_request_errors_total", model=model, code="queue_timeout") == 1
