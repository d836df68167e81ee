"""Filling the session hub's inference worker, for tests of what happens to a request while it waits in the queue.

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
