"""Usage analytics, system metrics, Prometheus series, health endpoints, the response cache, hardening."""
import os
import re
import subprocess
import sys
import time

import httpx

from apps.chat.models import GenerationRequest
from tests.conftest import make_account
from tests.support.processes import ROOT

HI = [{"role": "user", "content": "hi"}]


def _chat(hub, account, **extra):
    return httpx.post(f"{hub.api_url}/chat/completions", headers=account.auth, timeout=60,
                      json={"model": "tiny:chat", "messages": HI, "max_tokens": 3, **extra})


def test_analytics_sums_match_the_stored_records(hub, alice, bob, models):
    for _ in range(3):
        assert _chat(hub, alice).status_code == 200
    _chat(hub, bob)
    mine = httpx.get(f"{hub.api_url}/system/analytics?group_by=model", headers=alice.auth).json()
    assert mine["scope"] == "own"
    rows = {row["key"]: row for row in mine["data"]}
    records = GenerationRequest.objects.filter(user=alice.user)
    assert rows["tiny:chat"]["requests"] == 3 == records.count()
    assert rows["tiny:chat"]["completion_tokens"] == sum(r.completion_tokens for r in records)
    assert rows["tiny:chat"]["total_tokens"] == sum(r.prompt_tokens + r.completion_tokens for r in records)
    assert mine["totals"]["succeeded"] == 3 and mine["totals"]["error_rate"] == 0
    by_hour = httpx.get(f"{hub.api_url}/system/analytics?group_by=hour", headers=alice.auth).json()
    assert sum(row["requests"] for row in by_hour["data"]) == 3
    # Others' usage needs an admin key.
    refused = httpx.get(f"{hub.api_url}/system/analytics?user={bob.user.username}", headers=alice.auth)
    assert refused.status_code == 403
    operator = make_account("analyst", staff=True, scopes=["inference", "admin"])
    theirs = httpx.get(f"{hub.api_url}/system/analytics?group_by=user&user={bob.user.username}",
                       headers=operator.auth).json()
    assert [(row["key"], row["requests"]) for row in theirs["data"]] == [(bob.user.username, 1)]
    everyone = httpx.get(f"{hub.api_url}/system/analytics?group_by=user", headers=operator.auth).json()
    assert everyone["scope"] == "all" and {alice.user.username, bob.user.username} <= {
        row["key"] for row in everyone["data"]}
    bad = httpx.get(f"{hub.api_url}/system/analytics?group_by=planet", headers=alice.auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_system_metrics_report_host_workers_and_absent_gpus(hub, models):
    operator = make_account("sre", staff=True, scopes=["inference", "admin"])
    _chat(hub, operator)
    metrics = httpx.get(f"{hub.api_url}/system/metrics", headers=operator.auth).json()
    assert metrics["host"]["memory_total_bytes"] > 0 and metrics["host"]["cpu_count"] >= 1
    assert metrics["gpus"] == [] and "CPU" in metrics["gpu_note"]
    assert any(w["hostname"].startswith("inference@") and "tiny:chat" in w["loaded_models"]
               for w in metrics["workers"])
    assert "gpu.inference" in metrics["queues"]
    plain = make_account("plain")
    assert httpx.get(f"{hub.api_url}/system/metrics", headers=plain.auth).status_code == 403


def _series(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_prometheus_series_move_when_requests_are_served(hub, alice, models):
    before = httpx.get(f"{hub.base_url}/metrics").text
    for _ in range(2):
        _chat(hub, alice)
    # Counted when the worker settles the request, a moment after the client has its answer.
    served_before = _series(before, "aihub_requests_total", model="tiny:chat", state="succeeded")
    deadline = time.monotonic() + 10
    while True:
        after = httpx.get(f"{hub.base_url}/metrics").text
        served = _series(after, "aihub_requests_total", model="tiny:chat", state="succeeded")
        if served - served_before >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    served = _series(after, "aihub_requests_total", model="tiny:chat", state="succeeded")
    assert served - _series(before, "aihub_requests_total", model="tiny:chat", state="succeeded") == 2
    assert _series(after, "aihub_tokens_total", model="tiny:chat", kind="completion") - _series(
        before, "aihub_tokens_total", model="tiny:chat", kind="completion") == 6
    assert _series(after, "aihub_time_to_first_token_seconds_count", model="tiny:chat") >= 2
    assert _series(after, "aihub_worker_loaded_models") >= 1  # a worker-side figure
    assert "aihub_queue_depth{" in after and "django_http_requests_total_by_method_total" in after


def test_liveness_and_readiness(hub):
    assert httpx.get(f"{hub.base_url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{hub.base_url}/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["worker:gpu.inference"]["ok"]


def test_deterministic_requests_are_answered_from_the_cache_when_asked(hub, alice, bob, models):
    first = _chat(hub, alice, temperature=0, cache=True, max_tokens=8)
    assert first.headers["x-aihub-cache"] == "miss"
    second = _chat(hub, alice, temperature=0, cache=True, max_tokens=8)
    assert second.headers["x-aihub-cache"] == "hit"
    assert second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert second.json()["usage"] == first.json()["usage"]
    record = GenerationRequest.objects.get(id=second.headers["x-aihub-request-id"])
    assert record.cache_hit and record.worker == "cache"
    # Streaming hits work too, and the cache is per user, per request body, and opt-in.
    with httpx.stream("POST", f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=30, json={
            "model": "tiny:chat", "messages": HI, "max_tokens": 8, "temperature": 0, "cache": True,
            "stream": True}) as response:
        assert response.headers["x-aihub-cache"] == "hit"
        assert response.read().decode().rstrip().endswith("data: [DONE]")
    assert _chat(hub, bob, temperature=0, cache=True, max_tokens=8).headers["x-aihub-cache"] == "miss"
    assert _chat(hub, alice, temperature=0, cache=True, max_tokens=9).headers["x-aihub-cache"] == "miss"
    assert "x-aihub-cache" not in _chat(hub, alice, temperature=0, max_tokens=8).headers
    assert "x-aihub-cache" not in _chat(hub, alice, temperature=0.7, cache=True).headers
    hits = httpx.get(f"{hub.api_url}/system/analytics", headers=alice.auth).json()["totals"]["cache_hits"]
    assert hits == 2


def test_production_settings_pass_the_deploy_check():
    env = {**os.environ, "DJANGO_SECURE": "true", "DJANGO_SECRET_KEY": "x" * 30 + "-Ab3$kQ9!zP2&mW7@rT5^yU8*",
           "DJANGO_ALLOWED_HOSTS": "hub.example.com"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_keys_never_reach_the_logs(hub, alice, models):
    from django.conf import settings

    _chat(hub, alice)
    logs = "".join(path.read_text(errors="replace") for path in settings.AIHUB_LOG_DIR.glob("**/*.log"))
    assert not re.search(r"ahk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}", logs)
