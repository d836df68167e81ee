"""/metrics and /health: cheap whatever the tables hold, exact, private, optionally behind a token; disk space."""
import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
from django.db import connection

from apps.catalog.models import ModelEntry
from apps.chat.models import GenerationRequest
from apps.training.models import TrainingJob
from tests.conftest import RUN_DIR, make_account
from tests.support.processes import ProcessGroup, wait_until_listening
from tests.test_observability import _series

HI = [{"role": "user", "content": "hi"}]
BULK_ROWS = 200_000


def _chat(hub, account, **extra):
    return httpx.post(f"{hub.api_url}/chat/completions", headers=account.auth, timeout=60,
                      json={"model": "tiny:chat", "messages": HI, "max_tokens": 3, **extra})


def _scrape(base_url: str, **headers) -> str:
    response = httpx.get(f"{base_url}/metrics", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.text


def _rows_read_from_the_requests_table() -> int:
    """Rows PostgreSQL has handed out of the requests table, by sequential and index scans, so far."""
    time.sleep(1.5)  # a backend reports its counts when idle, at most once a second
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
                       "WHERE relname = %s", [GenerationRequest._meta.db_table])
        return cursor.fetchone()[0]


def _bulk_insert_requests(user_id: int, count: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO {GenerationRequest._meta.db_table}
                (id, user_id, model, route, params, prompt_messages, state, finish_reason, completion,
                 prompt_tokens, completion_tokens, worker, cache_hit, created_at, finished_at,
                 queue_wait_ms, time_to_first_token_ms, total_ms, attempts, queued_at, output, metadata)
            SELECT gen_random_uuid(), %s, 'bulk:model', '', '{{}}', '[]', 'succeeded', 'stop', '',
                   7, 5, 'bulk', false, now(), now(), 1, (n %% 5000)::float, (n %% 9000)::float, 1, now(),
                   '{{}}', '{{}}'
            FROM generate_series(1, %s) AS n""", [user_id, count])


def test_a_scrape_costs_the_same_and_reads_no_request_rows_whatever_the_requests_table_holds(hub, models):
    owner = make_account("bulk")
    _scrape(hub.base_url)  # warm: the first scrape of a process imports and connects

    def timed_scrapes() -> float:
        times = []
        for _ in range(5):
            tic = time.perf_counter()
            _scrape(hub.base_url)
            times.append(time.perf_counter() - tic)
        return statistics.median(times)

    baseline = timed_scrapes()
    _bulk_insert_requests(owner.user.id, BULK_ROWS)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {GenerationRequest._meta.db_table}")
        read_before = _rows_read_from_the_requests_table()
        loaded = timed_scrapes()
        read = _rows_read_from_the_requests_table() - read_before
        text = _scrape(hub.base_url)
    finally:
        GenerationRequest.objects.filter(model="bulk:model").delete()
    # Five scrapes of the old GROUP BY read the 200k rows three times each.
    assert read < 1000, f"scrapes read {read} rows of the requests table"
    assert loaded < baseline + 0.25, f"median scrape {loaded:.3f}s with {BULK_ROWS} rows, {baseline:.3f}s without"
    # Counters count what the hub served: rows written behind its back are not requests it answered.
    assert "bulk:model" not in text


def _wait_for_series(base_url: str, name: str, expected: float, **labels) -> str:
    """The worker counts a request when it settles it, just after the client has its answer."""
    deadline = time.monotonic() + 10
    while True:
        text = _scrape(base_url)
        if _series(text, name, **labels) >= expected or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_a_served_request_is_counted_exactly_once_even_when_settled_again(hub, models):
    from apps.chat.services import generation_settle

    user = make_account("counted")
    before = _scrape(hub.base_url)
    requests_before = _series(before, "aihub_requests_total", model="tiny:chat", state="succeeded")
    completion_before = _series(before, "aihub_tokens_total", model="tiny:chat", kind="completion")
    hits_before = _series(before, "aihub_cache_hits_total", model="tiny:chat")
    ttft_before = _series(before, "aihub_time_to_first_token_seconds_count", model="tiny:chat")
    fast_before = _series(before, "aihub_request_duration_seconds_bucket", model="tiny:chat", le="0.05")

    answered = [_chat(hub, user), _chat(hub, user, temperature=0, cache=True),
                _chat(hub, user, temperature=0, cache=True)]
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert answered[2].headers["x-aihub-cache"] == "hit"
    _wait_for_series(hub.base_url, "aihub_requests_total", requests_before + 3, model="tiny:chat",
                     state="succeeded")
    # A redelivered message, or the sweeper, settles a request again: it must not count twice.
    for response in answered:
        generation_settle(generation_id=response.headers["x-aihub-request-id"])
    time.sleep(0.5)
    after = _scrape(hub.base_url)
    completion = sum(r.json()["usage"]["completion_tokens"] for r in answered)
    assert _series(after, "aihub_requests_total", model="tiny:chat", state="succeeded") == requests_before + 3
    assert _series(after, "aihub_tokens_total", model="tiny:chat", kind="completion") == completion_before + completion
    assert _series(after, "aihub_cache_hits_total", model="tiny:chat") == hits_before + 1
    assert _series(after, "aihub_time_to_first_token_seconds_count", model="tiny:chat") == ttft_before + 3
    # The cache hit took no time: it lands in the first bucket.
    assert _series(after, "aihub_request_duration_seconds_bucket", model="tiny:chat", le="0.05") >= fast_before + 1


def test_metrics_name_no_fine_tuned_model_and_no_training_job(hub, models):
    from apps.chat.services import generation_settle

    owner = make_account("tuner")
    secret = f"ft:tiny:chat:private-thing:{uuid.uuid4().hex[:8]}"
    ModelEntry.objects.create(id=secret, path="/nonexistent", context_length=256, base_model="tiny:chat",
                              adapter_path="/nonexistent/adapter", owned_by=owner.user.username, enabled=False)
    jobs = [TrainingJob.objects.create(user=owner.user, base_model="tiny:chat", status=status, suffix="private-thing",
                                       fine_tuned_model=secret if status == "succeeded" else "", step=5,
                                       total_steps=10, loss=1.5)
            for status in ("running", "succeeded")]
    generation = GenerationRequest.objects.create(
        user=owner.user, model=secret, prompt_messages=HI, state="succeeded", prompt_tokens=4, completion_tokens=2,
        time_to_first_token_ms=30, total_ms=60)
    try:
        generation_settle(generation_id=generation.id)  # as the worker does when the request ends
        text = _scrape(hub.base_url)
    finally:
        ModelEntry.objects.filter(id=secret).delete()
        TrainingJob.objects.filter(id__in=[job.id for job in jobs]).delete()
    assert secret not in text and "private-thing" not in text and owner.user.username not in text
    assert not any(job.public_id in text or job.id.hex in text for job in jobs)
    assert _series(text, "aihub_requests_total", model="ft:tiny:chat", state="succeeded") >= 1
    assert _series(text, "aihub_training_jobs", model="tiny:chat", status="running") >= 1
    assert 'aihub_training_progress_ratio{model="tiny:chat"}' in text


@contextmanager
def _web(name: str, **env_overrides: str):
    """Another daphne on the hub's services (its workers included), with its own settings."""
    from aihub_project.embedded import free_port

    port = free_port()
    processes = ProcessGroup({**os.environ, **env_overrides}, RUN_DIR / "logs")
    processes.start_web(port, name=name)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_listening(base_url)
        yield base_url
    finally:
        processes.stop()


def test_metrics_need_the_token_once_one_is_set(hub):
    with _web("web-metrics-token", AIHUB_METRICS_TOKEN="scrape-me-7f3a") as base:
        anonymous = httpx.get(f"{base}/metrics", timeout=30)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "invalid_metrics_token"
        assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}
        wrong = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer scrape-me-7f3b"}, timeout=30)
        assert wrong.status_code == 401
        text = _scrape(base, Authorization="Bearer scrape-me-7f3a")
        assert "aihub_queue_depth{" in text and "aihub_disk_free_bytes{" in text
        # The token also shows /health's details to the operator.
        public = httpx.get(f"{base}/health", timeout=30).json()
        detailed = httpx.get(f"{base}/health", headers={"Authorization": "Bearer scrape-me-7f3a"},
                             timeout=30).json()
        assert "detail" not in public["checks"]["worker:gpu.inference"]
        assert "inference@" in detailed["checks"]["worker:gpu.inference"]["detail"]
    assert httpx.get(f"{hub.base_url}/metrics", timeout=30).status_code == 200  # no token set: open


def test_fifty_concurrent_health_calls_are_answered_at_once_from_cached_checks(hub):
    operator = make_account("health-sre", staff=True, scopes=["inference", "admin"])

    def call(index: int):
        headers = operator.auth if index % 2 else {}
        return httpx.get(f"{hub.base_url}/health", headers=headers, timeout=60)

    tic = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(call, range(50)))
    elapsed = time.perf_counter() - tic
    assert [a.status_code for a in answers] == [200] * 50
    # A broker inspect waits its whole timeout (1 s) per call: 50 calls would take 50 s.
    assert elapsed < 8, f"50 /health calls took {elapsed:.1f}s"
    detailed = [a.json() for a in answers[1::2]]
    assert len({body["checked_at"] for body in detailed}) <= 2  # one run of the checks serves them all
    assert "inference@" in detailed[0]["checks"]["worker:gpu.inference"]["detail"]
    assert detailed[0]["checks"]["worker:gpu.training"]["ok"]
    public = answers[0].json()
    assert "checked_at" not in public and all(set(check) <= {"ok", "warning"} for check in public["checks"].values())


def test_low_disk_space_is_a_warning_and_critical_space_an_outage(hub):
    huge = str(2**62)
    with _web("web-disk-low", AIHUB_DISK_WARN_BYTES=huge, AIHUB_METRICS_TOKEN="disk-token") as base:
        low = httpx.get(f"{base}/health", timeout=30)
        assert low.status_code == 200 and low.json()["status"] == "warning"
        assert low.json()["checks"]["disk"] == {"ok": True, "warning": True}
        detail = httpx.get(f"{base}/health", headers={"Authorization": "Bearer disk-token"}, timeout=30).json()
        assert "running low" in detail["checks"]["disk"]["detail"] and detail["checks"]["disk"]["free_bytes"] > 0
        text = _scrape(base, Authorization="Bearer disk-token")
        assert _series(text, "aihub_disk_free_bytes", path="var") > 0
    with _web("web-disk-full", AIHUB_DISK_CRITICAL_BYTES=huge) as base:
        full = httpx.get(f"{base}/health", timeout=30)
        assert full.status_code == 503 and full.json()["status"] == "unavailable"
        assert full.json()["checks"]["disk"]["ok"] is False
