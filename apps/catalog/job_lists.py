"""The web side of the worker job lists: send a job to the worker that holds its model (docs/queues.md).

Embedding and audio jobs do not go through Celery: each inference worker's threads
(workers/job_threads.py) pop them from a Redis list of its own, then from a shared one.
This is the one place that pushes onto those lists. It lives beside placement.py because
choosing the list is routing: the worker that holds the model, else the one with the most
free memory, else (no heartbeat known) the shared list any worker serves.
"""
from __future__ import annotations

from collections.abc import Callable

from django.conf import settings

from apps.core.errors import AppError
from apps.core.redis import sync_client

from .models import ModelEntry
from .placement import choose_worker
from .worker_registry import live_workers


def job_list_send(*, entry: ModelEntry, message: str, shared_queue: str, worker_queue: Callable[[str], str],
                  max_waiting: int, kind: str, attachments: dict[str, str] | None = None) -> str:
    """Push a job's `message` onto the list of the worker that holds (or will hold) `entry`'s model; returns
    the list's name.

    `shared_queue` and `worker_queue(hostname)` name the lists of this kind of job (apps/embeddings/jobs.py,
    apps/audio/jobs.py). A list already holding `max_waiting` jobs refuses with a 503 `queue_full` (the
    `kind` of request names it). `attachments` are Redis keys stored in the same round trip as the push,
    for what is too large to travel in the message (an upload); they expire as the list does.
    """
    _, hostname, _ = choose_worker(model_id=entry.id, bytes_by_device=entry.estimated_bytes_by_device(),
                                   workers=live_workers())
    queue = worker_queue(hostname) if hostname else shared_queue
    client = sync_client()
    if client.llen(queue) >= max_waiting:
        raise AppError(f"Too many {kind} requests are waiting for a worker; retry shortly.", status=503,
                       type="server_error", code="queue_full", retry_after=settings.AIHUB_QUEUE_RETRY_AFTER_SECONDS)
    # The list of a worker that went away, and what waits with a job, do not outlive its jobs: past the request
    # timeout the web has given up on them.
    ttl = int(settings.AIHUB_REQUEST_TIMEOUT_SECONDS) + 60
    pipe = client.pipeline(transaction=False)
    for key, value in (attachments or {}).items():
        pipe.set(key, value, ex=ttl)
    pipe.lpush(queue, message)
    pipe.expire(queue, ttl)
    pipe.execute()
    return queue
