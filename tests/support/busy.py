"""Filling the session hub's inference worker, for tests of what happens to a request while it waits in the queue.

`job_list_full_answers`: what a full embedding or audio job list (apps/catalog/job_lists.py) answers.

The worker batches whatever its task threads hold, so "busy" means every thread holds a generation: the
broker then keeps the next message (the worker prefetches one message per thread), and its row stays `queued`.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import httpx

# Task threads of the session hub's inference worker (tests/conftest.py passes it to start_hub).
INFERENCE_THREADS = 6


@contextmanager
def inference_worker_full(hub, model: str):
    """Every task thread holds a long generation of `model` (each has streamed a token); yields their request ids.
    On the way out their streams close, which cancels them, and the worker takes the queued requests."""
    from tests.conftest import make_account

    account = make_account("busy")
    with ExitStack() as streams:
        ids, readers = [], []  # a reader left to the garbage collector would close its stream (a cancel)
        for _ in range(INFERENCE_THREADS):
            response = streams.enter_context(httpx.stream(
                "POST", f"{hub.api_url}/chat/completions", headers=account.auth, timeout=60,
                json={"model": model, "max_tokens": 3000, "ignore_eos": True, "stream": True,
                      "messages": [{"role": "user", "content": "Go on"}]}))
            assert response.status_code == 200, response.read()
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            next(lines), next(lines)  # the role chunk and a first token: it runs
            readers.append(lines)
            ids.append(response.headers["x-aihub-request-id"])
        yield ids


def job_list_full_answers(path: str, body: dict, *, redis_db: int, **bound: str) -> list[httpx.Response]:
    """Two requests to `path` (under /api/v1) from a fresh key allowed one request at a time, by a web process
    whose worker lists admit no job (`bound`: its AIHUB_*_MAX_QUEUE set to "0") and that no worker reads."""
    from apps.accounts.models import ApiKey
    from tests.conftest import RUN_DIR, make_account
    from tests.support.processes import web_without_workers

    account = make_account("crowded")
    ApiKey.objects.filter(id=account.key.id).update(max_concurrent_generations=1)
    with web_without_workers(f"web-full-{redis_db}", redis_db=redis_db, log_dir=RUN_DIR / "logs",
                             **bound) as (base, _):
        return [httpx.post(f"{base}/api/v1{path}", headers=account.auth, timeout=60, json=body) for _ in range(2)]
