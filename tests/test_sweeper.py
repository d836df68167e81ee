"""Rows no message will finish: the periodic sweep re-publishes or fails them, and a web that gave up ends its row.

The web processes here publish into a broker database no worker reads, while
rows, limits and event logs are the hub's: the hub's broker "lost" their
messages. The sweeps come from a Celery beat started per test with short
thresholds; the hub's default worker runs them.
"""
import os
import sys
import time
import uuid
from contextlib import contextmanager

import httpx

import celeryconfig
from apps.accounts.models import ApiKey
from apps.chat.models import GenerationRequest, Message
from apps.core.publishing import send_task
from tests.conftest import RUN_DIR, make_account
from tests.support.processes import ProcessGroup, web_without_workers

HI = [{"role": "user", "content": "hi"}]


@contextmanager
def sweeping(**env: str):
    """A beat process scheduling the sweep with these settings (its thresholds travel in each sweep message)."""
    schedule = RUN_DIR / f"beat-{uuid.uuid4().hex[:8]}"
    processes = ProcessGroup(dict(os.environ), RUN_DIR / "logs")
    processes.start("beat", [sys.executable, "-m", "celery", "-A", "aihub_project", "beat", "-l", "INFO",
                             "-s", str(schedule)], env={"AIHUB_SWEEP_INTERVAL_SECONDS": "1", **env})
    try:
        yield
    finally:
        processes.stop()


@contextmanager
def lost_messages(name: str, redis_db: int, **env: str):
    with web_without_workers(name, redis_db=redis_db, log_dir=RUN_DIR / "logs", broker_only=True, **env) as (base, _):
        yield f"{base}/api/v1"


def _chat(api_url, account, timeout=90.0, **extra):
    return httpx.post(f"{api_url}/chat/completions", headers=account.auth, timeout=timeout,
                      json={"model": "tiny:chat", "messages": HI, "max_tokens": 3, **extra})


def _row(account) -> GenerationRequest:
    return GenerationRequest.objects.filter(user=account.user).latest("created_at")


def _answers(generation) -> int:
    return Message.objects.filter(generation=generation, role="assistant").count()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_a_request_whose_message_was_lost_is_answered_after_the_sweep_republishes_it(hub, models):
    account = make_account("lost")
    with sweeping(AIHUB_SWEEP_REPUBLISH_AFTER_SECONDS="2"), lost_messages("web-lost", 6) as api_url:
        response = _chat(api_url, account)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    generation = _row(account)
    assert generation.state == "succeeded" and generation.attempts == 1
    assert _answers(generation) == 1


def test_a_request_no_worker_takes_fails_with_queue_timeout_and_frees_its_slot(hub, models):
    account = make_account("stuck")
    ApiKey.objects.filter(pk=account.key.pk).update(max_concurrent_generations=1)
    with sweeping(AIHUB_SWEEP_REPUBLISH_AFTER_SECONDS="600", AIHUB_REQUEST_TIMEOUT_SECONDS="4"), \
            lost_messages("web-stuck", 7) as api_url:
        try:
            _chat(api_url, account, timeout=1)  # the client leaves; its request stays queued
        except httpx.ReadTimeout:
            pass
        # It holds the key's only concurrency slot...
        assert _chat(hub.api_url, account).json()["error"]["code"] == "rate_limit_exceeded"
        generation = _wait_for(lambda: GenerationRequest.objects.filter(user=account.user, state="failed").first(),
                               30, "the sweep to fail the request")
    assert generation.error["code"] == "queue_timeout"
    assert _answers(generation) == 0
    # ...until the sweep failed it and settled its limits: the key can ask again at once.
    response = _chat(hub.api_url, account)
    assert response.status_code == 200, response.text


def test_a_request_the_web_gave_up_on_is_never_answered_later(hub, models):
    account = make_account("late")
    with lost_messages("web-late", 8, AIHUB_REQUEST_TIMEOUT_SECONDS="3") as api_url:
        response = _chat(api_url, account)
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    generation = _row(account)
    assert generation.state == "failed" and generation.error["code"] == "timeout"

    # Its message turns up after all (a slow broker, a sweep): the worker must not answer it.
    send_task(celeryconfig.GENERATE_TASK, args=[str(generation.id)], queue="gpu.inference")
    _wait_for(lambda: f"ignoring message for {generation.id}" in hub.processes.log("inference"), 30,
              "the worker to take the message")
    generation.refresh_from_db()
    assert generation.state == "failed" and generation.error["code"] == "timeout"
    assert _answers(generation) == 0 and generation.attempts == 0
