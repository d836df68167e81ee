"""Publishing tasks: by name (the web process never imports worker code or torch), after commit."""
from __future__ import annotations

from django.db import transaction

import celeryconfig

# Kombu gives up publishing after ~0.6 s by default; a broker restart takes longer, and a request
# whose publish failed after its row committed would wait for the sweeper. Retry for ~15 s instead.
PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0, "interval_step": 0.25, "interval_max": 1.0}


def send_task(task_name: str, *, args: list, queue: str | None = None, **options) -> None:
    """Publish a task now, to `queue` or else its route's (celeryconfig). Every caller publishes through here.

    Nobody reads Celery results: answers travel through the event log and
    PostgreSQL. Without `ignore_result`, Celery's Redis result backend
    subscribes to a result channel for every message sent by name, a pub/sub
    round trip (and connection) on the request path before the task is queued.
    """
    from aihub_project.celery import app

    app.send_task(task_name, args=args, queue=queue or celeryconfig.queue_of(task_name), ignore_result=True, retry=True,
                  retry_policy=PUBLISH_RETRY_POLICY, **options)


def enqueue_on_commit(task_name: str, *, args: list, queue: str | None = None) -> None:
    """Publish once the transaction commits: a worker must never pick up a row that is not yet committed."""
    transaction.on_commit(lambda: send_task(task_name, args=args, queue=queue))
