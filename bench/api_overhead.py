"""Benchmark: the API's own overhead per request, and the enqueue rate (issue: keys, limits, observability).

1. Per request, what authentication and limits add, measured on the real code
   against embedded PostgreSQL + Valkey: the API-key lookup, and the atomic
   limit admission (one Lua call); the worker settles afterwards (off the request path). Usage
   analytics add nothing per request: they are computed on read from the
   request record that the queue needs anyway. Target: <= 2 ms at p50.
2. The web path of one streaming request, end to end over HTTP: one client,
   one request at a time, time until the response headers arrive (the request
   is authenticated, stored and enqueued by then). It is the web's share of
   the time to first token over SSE.
3. Enqueue rate: two daphne processes, a client pool posting chat requests
   into a GPU queue that no worker drains; requests per second accepted.

Run: `python bench/api_overhead.py [--runs 2000] [--requests 400]`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from stack import django_on_embedded_services


def p50_ms(fn, runs: int) -> float:
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        values.append(time.perf_counter() - started)
    return statistics.median(values) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()

    with django_on_embedded_services() as run_dir:
        import httpx

        from aihub_project.embedded import free_port
        from apps.accounts.limits import limits_admit, limits_settle
        from apps.accounts.models import ApiKey
        from apps.accounts.services import api_key_authenticate, api_key_create, user_get_or_create
        from apps.chat.models import GenerationRequest
        from tests.support.processes import ProcessGroup, wait_until_listening

        user = user_get_or_create(username="bench")
        key, raw = api_key_create(user=user)
        ApiKey.objects.filter(pk=key.pk).update(requests_per_minute=10**9, tokens_per_minute=2 * 10**9,
                                                max_concurrent_generations=10**6, token_budget=10**15)
        key = api_key_authenticate(raw_key=raw)

        auth_ms = p50_ms(lambda: api_key_authenticate(raw_key=raw), args.runs)

        reservations = []

        def admit():
            reservations.append(limits_admit(key=key, request_id=str(uuid.uuid4()), cost=100))

        limits_ms = p50_ms(admit, args.runs)
        settle_ms = p50_ms(lambda: limits_settle(reservations.pop(), used_tokens=80), args.runs)

        # Enqueue rate: two web processes, no worker on this Valkey database.
        env = dict(os.environ)
        env["REDIS_URL"] = env["REDIS_URL"].rsplit("/", 1)[0] + "/3"
        env["AIHUB_MAX_QUEUE"] = "0"
        processes = ProcessGroup(env, run_dir / "logs")
        ports = [free_port(), free_port()]
        for index, port in enumerate(ports):
            processes.start_web(port, name=f"web{index}")
        try:
            for port in ports:
                wait_until_listening(f"http://127.0.0.1:{port}")
            body = {"model": "smollm2:135m", "stream": True, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hello"}]}
            headers = {"Authorization": f"Bearer {raw}"}
            clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers=headers, timeout=30)
                       for port in ports]

            def post(index: int) -> int:
                # Streaming, closed once the headers arrive: the request is stored and enqueued by then.
                with clients[index % 2].stream("POST", "/chat/completions", json=body) as response:
                    return response.status_code

            headers_ms = p50_ms(lambda: post(0), args.requests)

            before = GenerationRequest.objects.count()
            started = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(post, range(args.requests)))
            elapsed = time.perf_counter() - started
            stored = GenerationRequest.objects.count() - before
        finally:
            processes.stop()
            GenerationRequest.objects.filter(state="queued").update(state="cancelled")

    print(f"per-request overhead, p50 of {args.runs}:")
    print(f"  API-key authentication        {auth_ms:6.3f} ms")
    print(f"  limit admission (atomic Lua)  {limits_ms:6.3f} ms")
    print(f"  total added in the web path   {auth_ms + limits_ms:6.3f} ms   (target <= 2 ms)")
    print(f"  settlement (on the worker)    {settle_ms:6.3f} ms")
    print(f"web path of one streaming request, p50 of {args.requests} sequential:")
    print(f"  time to response headers      {headers_ms:6.2f} ms")
    print(f"enqueue rate, two web processes, {args.requests} requests, 16 clients:")
    print(f"  {stored / elapsed:8.1f} requests/s accepted (statuses {dict(Counter(statuses))}, {stored} stored)")


if __name__ == "__main__":
    main()
