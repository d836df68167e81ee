"""Readiness checks: each returns (ok, detail) and never raises."""
from __future__ import annotations

from django.db import connection

import celeryconfig
from apps.core.redis import sync_client


def check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
        return True, f"ok (pgvector {row[0]})" if row else "ok (pgvector not installed)"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return False, f"{type(exc).__name__}: {exc}"


def check_redis() -> tuple[bool, str]:
    try:
        sync_client().ping()
        return True, "ok"
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def check_broker_and_workers(timeout: float = 1.0) -> tuple[tuple[bool, str], dict[str, tuple[bool, str]]]:
    """Broker reachability, then which GPU queues some live worker consumes."""
    from aihub_project.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        failed = (False, "broker unreachable")
        return (False, f"{type(exc).__name__}: {exc}"), {q: failed for q in celeryconfig.GPU_QUEUES}
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {}
    for hostname, queues in replies.items():
        for queue in queues:
            consumers.setdefault(queue["name"], []).append(hostname)
    workers = {
        queue: (True, ", ".join(sorted(consumers[queue]))) if queue in consumers
        else (False, "no worker consumes this queue")
        for queue in celeryconfig.GPU_QUEUES
    }
    return (True, "ok"), workers
