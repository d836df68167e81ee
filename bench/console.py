"""Benchmark: server time of the operations dashboard and the biggest admin list pages, with a full requests table.

A real inference worker (the default model loaded, so the dashboard has a
worker, memory and a model to show) on embedded PostgreSQL + Valkey, and
`--rows` (100,000) stored generation requests bulk-inserted as the hub stores
them: a few models, 3 % failed with an error code, a time to first token
each, made by `--users` users with an API key each, spread over the last
`--hours` (24) hours. Then, in the same process through Django's test client
(server time: URL routing, the view, its queries and the template; no
network), each page `--runs` times after two warm-up renders: p50 and p95, and
the number of SQL queries.

Twice: with the rows spread over the day (the last hour holds 1/24 of them),
then with every row moved into the last hour (the recent failures and the
list pages filter by time). The dashboard's figures come from per-minute
counters, filled for the last hour to their largest (every model, state and
latency bucket in every minute). Target: p50 under 300 ms.

Run: `python bench/console.py [--rows 100000] [--runs 15]` (`make bench-console`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from stack import django_on_embedded_services

PAGES = [
    ("dashboard (admin index)", "/admin/"),
    ("dashboard state (poll)", "/admin/dashboard/state"),
    ("generation requests", "/admin/chat/generationrequest/"),
    ("generation requests, failed", "/admin/chat/generationrequest/?state__exact=failed"),
    ("models", "/admin/catalog/modelentry/"),
    ("api keys", "/admin/accounts/apikey/"),
    ("users (with usage)", "/admin/auth/user/"),
]
MODELS = ["smollm2:135m", "tiny:chat", "qwen:0.5b", "llama:1b", "ft:smollm2:135m:support:0a1b2c3d"]


def bulk_insert_requests(*, rows: int, hours: float) -> None:
    from django.db import connection

    from apps.chat.models import GenerationRequest

    models = "ARRAY[" + ", ".join(f"'{m}'" for m in MODELS) + "]"
    with connection.cursor() as cursor:
        cursor.execute("SELECT array_agg(id) FROM auth_user WHERE username LIKE 'bench-%%'")
        user_ids = cursor.fetchone()[0]
        cursor.execute(f"""
            INSERT INTO {GenerationRequest._meta.db_table}
                (id, user_id, model, route, params, prompt_messages, state, finish_reason, completion, error,
                 prompt_tokens, completion_tokens, worker, cache_hit, created_at, finished_at, queue_wait_ms,
                 time_to_first_token_ms, total_ms, attempts, queued_at, output, metadata)
            SELECT gen_random_uuid(), (%s::bigint[])[1 + n %% cardinality(%s::bigint[])],
                   ({models})[1 + n %% {len(MODELS)}], 'bench', '{{}}', '[]',
                   CASE WHEN n %% 33 = 0 THEN 'failed' ELSE 'succeeded' END, 'stop', 'an answer',
                   CASE WHEN n %% 33 = 0 THEN '{{"message": "The device ran out of memory.", "type": "server_error",
                        "param": null, "code": "insufficient_memory"}}'::jsonb END,
                   40 + n %% 200, 10 + n %% 300, 'inference@bench:1', false,
                   now() - (n %% %s) * interval '1 second', now(), 5 + n %% 50,
                   CASE WHEN n %% 33 = 0 THEN NULL ELSE (50 + (n * 7919) %% 2000)::float END,
                   (300 + n %% 5000)::float, 1, now(), '{{}}', '{{}}'
            FROM generate_series(1, %s) AS n""", [user_ids, user_ids, int(hours * 3600), rows])
        cursor.execute(f"ANALYZE {GenerationRequest._meta.db_table}")


def fill_minute_counters() -> int:
    """The dashboard's figures read the per-minute counters (apps/monitoring/counters.py), not the rows: fill
    the last hour's 60 hashes to their largest (every model, every state, every TTFT bucket), which is what
    a busy hour costs the dashboard, whatever the number of requests. Returns the number of fields."""
    from apps.core.redis import sync_client
    from apps.monitoring.counters import MINUTE_TTFT_BOUNDS_MS, field, minute_key, model_label

    now = int(time.time())
    pipe = sync_client().pipeline(transaction=False)
    fields = 0
    for minute in range(60):
        start = now - now % 60 - 60 * minute
        values = {}
        for model in MODELS:
            label = model_label(model)
            for state in ("succeeded", "failed", "cancelled"):
                values[field("requests", label, state)] = 30
            for bucket in range(len(MINUTE_TTFT_BOUNDS_MS) + 1):
                values[field("ttft", label, str(bucket))] = 1
        pipe.hset(minute_key(start), mapping=values)
        fields += len(values)
    pipe.execute()
    return fields


def measure(client, runs: int) -> list[tuple[str, float, float, int]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    results = []
    for name, url in PAGES:
        for _ in range(2):
            assert client.get(url).status_code == 200, url
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, url
        times.sort()
        results.append((name, statistics.median(times), times[int(0.95 * (len(times) - 1))], len(queries)))
    return results


def report(title: str, results) -> None:
    print(f"\n{title}")
    print(f"  {'page':32} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
    for name, p50, p95, queries in results:
        flag = "" if p50 < 300 else "   over the 300 ms target"
        print(f"  {name:32} {p50:8.1f} {p95:8.1f} {queries:8d}{flag}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    with django_on_embedded_services() as run_dir:
        from asgiref.sync import async_to_sync
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test import Client

        from apps.accounts.services import api_key_create
        from apps.catalog.load_unload import model_command
        from apps.catalog.models import ModelEntry
        from apps.catalog.worker_registry import live_workers
        from apps.chat.models import GenerationRequest
        from tests.support.processes import ProcessGroup

        processes = ProcessGroup(dict(os.environ), run_dir / "logs")
        processes.start_worker("inference", "gpu.inference")
        try:
            deadline = time.monotonic() + 120
            while not live_workers():  # its first heartbeat
                if time.monotonic() > deadline:
                    raise SystemExit("the inference worker did not start: see " + str(run_dir / "logs"))
                time.sleep(0.5)
            async_to_sync(model_command)("load", ModelEntry.objects.get(id="smollm2:135m"))

            users = get_user_model()
            for index in range(args.users):
                user = users.objects.create_user(username=f"bench-{index}")
                api_key_create(user=user, name="bench")
            started = time.perf_counter()
            bulk_insert_requests(rows=args.rows, hours=args.hours)
            print(f"{GenerationRequest.objects.count()} stored requests from {args.users} users "
                  f"(inserted in {time.perf_counter() - started:.1f} s), {ModelEntry.objects.count()} models, "
                  f"{fill_minute_counters()} per-minute counter fields")

            admin = users.objects.create_superuser(username="bench-admin", password="bench-pw-123456")
            client = Client(SERVER_NAME="localhost")
            client.force_login(admin)
            report(f"Rows spread over {args.hours:g} h", measure(client, args.runs))

            with connection.cursor() as cursor:
                cursor.execute(f"UPDATE {GenerationRequest._meta.db_table} "
                               "SET created_at = now() - (random() * interval '55 minutes')")
                cursor.execute(f"ANALYZE {GenerationRequest._meta.db_table}")
            report("Every row in the last hour", measure(client, args.runs))
        finally:
            processes.stop()


if __name__ == "__main__":
    main()
