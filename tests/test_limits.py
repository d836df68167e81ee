"""Per-key limits (atomic across web processes), budgets, and the bounded queue."""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from apps.accounts.models import ApiKey, Profile
from apps.chat.models import GenerationRequest
from tests.conftest import RUN_DIR, make_account
from tests.support.processes import ProcessGroup, wait_until_healthy, web_without_workers

HI = [{"role": "user", "content": "hi"}]


def limited(**limits):
    account = make_account("limited")
    ApiKey.objects.filter(pk=account.key.pk).update(**limits)
    return account


def _chat(base, account, **extra):
    return httpx.post(f"{base}/chat/completions", headers=account.auth, timeout=60,
                      json={"model": "tiny:chat", "messages": HI, "max_tokens": 2, **extra})


def _refused(response, code):
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    assert int(response.headers["retry-after"]) >= 1


@pytest.fixture(scope="module")
def second_web(hub):
    """Another daphne process on the same services: limits must hold across both."""
    from aihub_project.embedded import free_port

    port = free_port()
    processes = ProcessGroup(dict(os.environ), RUN_DIR / "logs")
    processes.start_web(port, name="web2")
    wait_until_healthy(f"http://127.0.0.1:{port}", processes)
    yield f"http://127.0.0.1:{port}/api/v1"
    processes.stop()


def _within_one_minute_window(needed_seconds: float = 30) -> None:
    """Per-minute limits count in wall-clock minutes (apps/accounts/limits.py): a test whose requests must all
    fall in one window starts at a window's beginning when fewer than `needed_seconds` of it are left (on a
    loaded machine three generations can take longer than the rest of a minute)."""
    left = 60 - time.time() % 60
    if left < needed_seconds:
        time.sleep(left + 0.1)


def test_requests_per_minute_are_limited_and_refusals_store_nothing(hub, models):
    account = limited(requests_per_minute=2)
    _within_one_minute_window()
    assert _chat(hub.api_url, account).status_code == 200
    assert _chat(hub.api_url, account).status_code == 200
    _refused(_chat(hub.api_url, account), "rate_limit_exceeded")
    assert GenerationRequest.objects.filter(user=account.user).count() == 2


def test_one_limit_holds_across_two_web_processes_under_concurrency(hub, second_web, models):
    account = limited(requests_per_minute=3)
    bases = [hub.api_url, second_web] * 4
    _within_one_minute_window()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda base: _chat(base, account).status_code, bases))
    assert sorted(statuses) == [200] * 3 + [429] * 5
    assert GenerationRequest.objects.filter(user=account.user).count() == 3


def test_tokens_per_minute_count_the_reservation(hub, models):
    account = limited(tokens_per_minute=100)
    _refused(_chat(hub.api_url, account, max_tokens=200), "rate_limit_exceeded")
    assert _chat(hub.api_url, account, max_tokens=20).status_code == 200


def test_a_token_budget_runs_out_with_insufficient_quota(hub, models):
    from apps.core.redis import sync_client

    account = limited(token_budget=120, budget_period_days=1)
    used, last = 0, 0
    while True:
        response = _chat(hub.api_url, account, max_tokens=10)
        if response.status_code != 200:
            break
        last = response.json()["usage"]["total_tokens"]
        used += last
    _refused(response, "insufficient_quota")
    # The counter holds the tokens really used (estimates were settled), and the budget was
    # exceeded by at most the last admitted request.
    budget_key = GenerationRequest.objects.filter(user=account.user).first().params["limits"]["keys"][2]
    deadline = time.monotonic() + 3  # the worker settles just after it announces the answer
    while int(sync_client().get(budget_key)) != used and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(sync_client().get(budget_key)) == used
    assert 120 - last < used <= 120 + last


def test_concurrent_generations_are_limited_and_freed_when_done(hub, models):
    account = limited(max_concurrent_generations=1)
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=account.auth) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "chat.completion", "request": {"model": "tiny:chat", "messages": HI,
                                                                   "max_tokens": 3000}}))
        request_id = json.loads(ws.recv(timeout=10))["request_id"]
        _refused(_chat(hub.api_url, account), "rate_limit_exceeded")
        ws.send(json.dumps({"type": "cancel", "request_id": request_id}))
        while json.loads(ws.recv(timeout=30))["type"] != "done":
            pass
    deadline = time.monotonic() + 5
    while _chat(hub.api_url, account).status_code != 200:
        assert time.monotonic() < deadline, "the slot was never freed"
        time.sleep(0.1)


def test_user_defaults_apply_and_a_key_override_wins(hub, models):
    account = make_account("profiled")
    Profile.objects.create(user=account.user, requests_per_minute=1)
    assert _chat(hub.api_url, account).status_code == 200
    _refused(_chat(hub.api_url, account), "rate_limit_exceeded")
    ApiKey.objects.filter(pk=account.key.pk).update(requests_per_minute=5)
    assert _chat(hub.api_url, account).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(hub, models):
    with web_without_workers("web-queue", redis_db=2, log_dir=RUN_DIR / "logs", AIHUB_MAX_QUEUE="2") as (base, _):
        account = make_account("queued")
        waiting = GenerationRequest.objects.filter(state="queued").count()
        responses = []
        for _ in range(max(0, 2 - waiting)):
            with httpx.stream("POST", f"{base}/api/v1/chat/completions", headers=account.auth, timeout=10,
                              json={"model": "tiny:chat", "messages": HI, "stream": True}) as response:
                responses.append(response.status_code)
        full = _chat(f"{base}/api/v1", account)
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert full.headers["retry-after"] == "5"
