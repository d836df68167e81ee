"""Enqueue-on-commit: a worker must never pick up a row that is not yet committed."""
from __future__ import annotations

from django.db import transaction


def enqueue_on_commit(task_name: str, *, args: list, queue: str) -> None:
    # send_task by name: the web process never imports worker code (or torch).
    from aihub_project.celery import app

    transaction.on_commit(lambda: app.send_task(task_name, args=args, queue=queue))
