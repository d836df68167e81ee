"""Readiness: cheap component checks, cached per process for AIHUB_HEALTH_CACHE_SECONDS.

Load balancers and probes call /health often and without credentials, so a
call must cost nearly nothing: the checks run at most once per cache period
per web process (a lock makes concurrent callers wait for one run rather than
each running them), and none of them asks the workers anything. Workers are
known from what they write themselves: the inference heartbeats
(apps/catalog/worker_registry.py) and a presence beat every worker writes
(workers/presence.py), each listing the queues the worker consumes. A broker
`inspect` (a broadcast plus a wait of its whole timeout) is never used.

Each check returns (ok, detail) and never raises.
"""
from __future__ import annotations

import json
import shutil
import threading
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone

import celeryconfig
from apps.core.redis import sync_client

PRESENCE_PREFIX = "aihub:presence:"  # workers/presence.py writes under it

_lock = threading.Lock()
_cached: tuple[float, dict] | None = None  # (monotonic expiry, report)


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


def check_broker(timeout: float = 1.0) -> tuple[bool, str]:
    from aihub_project.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True, "ok"
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def queue_consumers() -> dict[str, list[str]]:
    """Queue -> hostnames of live workers consuming it, from heartbeats and presence beats."""
    from apps.catalog.worker_registry import live_workers

    consumers: dict[str, set[str]] = {}
    for worker in live_workers():
        for queue in worker.raw.get("queues") or []:
            consumers.setdefault(queue, set()).add(worker.hostname)
    client = sync_client()
    keys = list(client.scan_iter(match=PRESENCE_PREFIX + "*", count=100))
    for value in client.mget(keys) if keys else []:
        if value:
            beat = json.loads(value)
            for queue in beat["queues"]:
                consumers.setdefault(queue, set()).add(beat["hostname"])
    return {queue: sorted(hosts) for queue, hosts in consumers.items()}


def check_workers() -> dict[str, tuple[bool, str]]:
    try:
        consumers = queue_consumers()
    except Exception as exc:  # noqa: BLE001
        return {queue: (False, f"{type(exc).__name__}: {exc}") for queue in celeryconfig.GPU_QUEUES}
    return {queue: (True, ", ".join(consumers[queue])) if consumers.get(queue)
            else (False, "no live worker consumes this queue") for queue in celeryconfig.GPU_QUEUES}


def disk_threshold(spec: float, total_bytes: int) -> int:
    """A disk threshold knob: a fraction (0 < x <= 1) of the filesystem, or bytes; 0 turns it off."""
    return int(total_bytes * spec) if 0 < spec <= 1 else int(spec)


def disk_space() -> dict:
    """Free space where the hub keeps its state (AIHUB_VAR_DIR): databases, models, uploads, checkpoints."""
    usage = shutil.disk_usage(settings.AIHUB_VAR_DIR)
    warn = disk_threshold(settings.AIHUB_DISK_WARN_BYTES, usage.total)
    critical = disk_threshold(settings.AIHUB_DISK_CRITICAL_BYTES, usage.total)
    return {"path": str(settings.AIHUB_VAR_DIR), "free_bytes": usage.free, "total_bytes": usage.total,
            "warn_below_bytes": warn, "critical_below_bytes": critical,
            "critical": usage.free < critical, "low": usage.free < warn}


def check_disk() -> dict:
    try:
        disk = disk_space()
    except OSError as exc:
        return {"ok": False, "warning": False, "detail": f"{type(exc).__name__}: {exc}"}
    free_gib = disk["free_bytes"] / 2**30
    if disk["critical"]:
        detail = f"{free_gib:.2f} GiB free in {disk['path']}: below the critical threshold"
    elif disk["low"]:
        detail = f"{free_gib:.2f} GiB free in {disk['path']}: running low"
    else:
        detail = f"{free_gib:.2f} GiB free in {disk['path']}"
    return {"ok": not disk["critical"], "warning": disk["low"] and not disk["critical"], "detail": detail,
            "free_bytes": disk["free_bytes"], "total_bytes": disk["total_bytes"]}


def _run_checks() -> dict:
    checks = {"database": check_database(), "redis": check_redis(), "broker": check_broker()}
    checks.update({f"worker:{queue}": result for queue, result in check_workers().items()})
    entries = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()}
    entries["disk"] = check_disk()
    if not all(entry["ok"] for entry in entries.values()):
        status = "unavailable"
    elif any(entry.get("warning") for entry in entries.values()):
        status = "warning"  # still ready: a warning is for the operator, not for the load balancer
    else:
        status = "ok"
    return {"status": status, "checks": entries, "checked_at": timezone.now().isoformat()}


def health_report() -> dict:
    """The latest checks, at most AIHUB_HEALTH_CACHE_SECONDS old."""
    global _cached
    with _lock:
        if _cached is None or time.monotonic() >= _cached[0]:
            _cached = (time.monotonic() + settings.AIHUB_HEALTH_CACHE_SECONDS, _run_checks())
        return _cached[1]


def health_public(report: dict) -> dict:
    """What anyone may see: the status and which checks hold, no hostnames, paths or error texts."""
    return {"status": report["status"], "checks": {
        name: {key: value for key, value in entry.items() if key in ("ok", "warning")}
        for name, entry in report["checks"].items()}}
